// The console's entry: the header, and one page per hash route. A page renders into #app and
// returns what stops it (the run page's live watch), called when the route changes.

import "./style.css";
import { ApiError, setUnauthenticatedHandler, whoami } from "./api";
import { clear, h, type Dispose } from "./dom";
import { comparePage } from "./pages/compare";
import { deploymentPage } from "./pages/deployment";
import { deploymentsPage } from "./pages/deployments";
import { experimentPage } from "./pages/experiment";
import { experimentsPage } from "./pages/experiments";
import { jobPage } from "./pages/job";
import { jobsPage } from "./pages/jobs";
import { runPage } from "./pages/run";
import { signinPage } from "./pages/signin";
import { workersPage } from "./pages/workers";
import { go, href, parseRoute, SECTIONS, type Route } from "./router";
import { currentPrincipal, getKey, setPrincipal, signOut } from "./session";

const app = document.getElementById("app")!;
const header = document.getElementById("header")!;
let dispose: Dispose = () => {};

function renderHeader(): void {
  clear(header);
  const who = currentPrincipal();
  header.append(h("a", { href: "#/experiments", class: "brand" }, "Neural"));
  if (who) {
    const nav = h("nav", {});
    for (const section of SECTIONS) {
      nav.append(h("a", { href: href({ page: section.page }), "data-testid": `nav-${section.page}` }, section.label));
    }
    header.append(
      nav,
      h("span", { "data-testid": "whoami", class: "whoami" },
        `${who.subject} (${who.role.replace("ROLE_", "").toLowerCase()})`),
      h("button", { "data-testid": "sign-out", type: "button", onclick: () => leave() }, "Sign out"),
    );
  }
}

function leave(message = ""): void {
  signOut();
  sessionStorage.setItem("neural.signinMessage", message);
  if (parseRoute(location.hash).page === "signin") void render();
  else go({ page: "signin" });
}

async function render(): Promise<void> {
  dispose();
  dispose = () => {};
  const route: Route = parseRoute(location.hash);
  // A reload keeps the key (sessionStorage) but not who it is: ask once.
  if (getKey() && !currentPrincipal()) {
    try {
      setPrincipal(await whoami());
    } catch (err) {
      if (!(err instanceof ApiError && err.httpStatus === 401)) {
        clear(app);
        app.append(h("p", { class: "error" }, `Cannot reach the platform: ${(err as Error).message}`));
        return;
      }
    }
  }
  if (!currentPrincipal() && route.page !== "signin") return go({ page: "signin" });
  if (currentPrincipal() && route.page === "signin") return go({ page: "experiments" });
  renderHeader();
  clear(app);
  switch (route.page) {
    case "signin":
      dispose = signinPage(app, () => go({ page: "experiments" }));
      break;
    case "experiments":
      dispose = experimentsPage(app);
      break;
    case "experiment":
      dispose = experimentPage(app, route.id);
      break;
    case "run":
      dispose = runPage(app, route.id);
      break;
    case "compare":
      dispose = comparePage(app, route.ids);
      break;
    case "jobs":
      dispose = jobsPage(app);
      break;
    case "job":
      dispose = jobPage(app, route.id);
      break;
    case "deployments":
      dispose = deploymentsPage(app);
      break;
    case "deployment":
      dispose = deploymentPage(app, route.id);
      break;
    case "workers":
      dispose = workersPage(app);
      break;
  }
}

// A key revoked while the console is open: back to sign-in, saying why.
setUnauthenticatedHandler((err) => {
  if (currentPrincipal()) leave(err.message);
});
window.addEventListener("hashchange", () => void render());
void render();
