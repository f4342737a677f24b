// Hash routes (#/experiments/<id>), so the gateway only ever serves files.

export type Route =
  | { page: "signin" }
  | { page: "experiments" }
  | { page: "experiment"; id: string }
  | { page: "run"; id: string };

export function parseRoute(hash: string): Route {
  const parts = hash.replace(/^#\/?/, "").split("/").filter(Boolean).map(decodeURIComponent);
  if (parts[0] === "signin" && parts.length === 1) return { page: "signin" };
  if (parts[0] === "experiments" && parts.length === 2) return { page: "experiment", id: parts[1] };
  if (parts[0] === "runs" && parts.length === 2) return { page: "run", id: parts[1] };
  // Anything else, the empty hash included, is the first screen after sign-in.
  return { page: "experiments" };
}

export function href(route: Route): string {
  switch (route.page) {
    case "signin":
      return "#/signin";
    case "experiments":
      return "#/experiments";
    case "experiment":
      return `#/experiments/${encodeURIComponent(route.id)}`;
    case "run":
      return `#/runs/${encodeURIComponent(route.id)}`;
  }
}

export function go(route: Route): void {
  location.hash = href(route);
}
