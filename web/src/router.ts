// Hash routes (#/experiments/<id>), so the gateway only ever serves files.

export type Route =
  | { page: "signin" }
  | { page: "experiments" }
  | { page: "experiment"; id: string }
  | { page: "run"; id: string }
  | { page: "compare"; ids: string[] }
  | { page: "jobs" }
  | { page: "job"; id: string }
  | { page: "deployments" }
  | { page: "deployment"; id: string }
  | { page: "workers" };

/** The pages the header links to, in its order. */
export const SECTIONS = [
  { page: "experiments", label: "Experiments" },
  { page: "jobs", label: "Jobs" },
  { page: "deployments", label: "Deployments" },
  { page: "workers", label: "Workers" },
] as const;

export function parseRoute(hash: string): Route {
  const parts = hash.replace(/^#\/?/, "").split("/").filter(Boolean).map(decodeURIComponent);
  const [first, second] = parts;
  if (parts.length === 1) {
    if (first === "signin") return { page: "signin" };
    if (first === "jobs") return { page: "jobs" };
    if (first === "deployments") return { page: "deployments" };
    if (first === "workers") return { page: "workers" };
  }
  if (parts.length === 2) {
    if (first === "experiments") return { page: "experiment", id: second };
    if (first === "runs") return { page: "run", id: second };
    if (first === "jobs") return { page: "job", id: second };
    if (first === "deployments") return { page: "deployment", id: second };
    // #/compare/<id>,<id>,...: the ids are encoded one by one, so a comma always separates
    if (first === "compare") {
      const ids = hash.replace(/^#\/?compare\//, "").split(",").filter(Boolean).map(decodeURIComponent);
      return { page: "compare", ids };
    }
  }
  // Anything else, the empty hash included, is the first screen after sign-in.
  return { page: "experiments" };
}

export function href(route: Route): string {
  const enc = encodeURIComponent;
  switch (route.page) {
    case "signin":
    case "experiments":
    case "jobs":
    case "deployments":
    case "workers":
      return `#/${route.page}`;
    case "experiment":
      return `#/experiments/${enc(route.id)}`;
    case "run":
      return `#/runs/${enc(route.id)}`;
    case "job":
      return `#/jobs/${enc(route.id)}`;
    case "deployment":
      return `#/deployments/${enc(route.id)}`;
    case "compare":
      return `#/compare/${route.ids.map(enc).join(",")}`;
  }
}

export function go(route: Route): void {
  location.hash = href(route);
}
