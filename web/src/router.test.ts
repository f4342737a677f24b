import { describe, expect, it } from "vitest";
import { href, parseRoute, type Route } from "./router";

describe("router", () => {
  it("reads each page's hash", () => {
    expect(parseRoute("#/signin")).toEqual({ page: "signin" });
    expect(parseRoute("#/experiments")).toEqual({ page: "experiments" });
    expect(parseRoute("#/experiments/abc")).toEqual({ page: "experiment", id: "abc" });
    expect(parseRoute("#/runs/r%2F1")).toEqual({ page: "run", id: "r/1" });
    expect(parseRoute("#/jobs")).toEqual({ page: "jobs" });
    expect(parseRoute("#/jobs/j1")).toEqual({ page: "job", id: "j1" });
    expect(parseRoute("#/deployments")).toEqual({ page: "deployments" });
    expect(parseRoute("#/deployments/d1")).toEqual({ page: "deployment", id: "d1" });
    expect(parseRoute("#/workers")).toEqual({ page: "workers" });
    expect(parseRoute("#/compare/a,b")).toEqual({ page: "compare", ids: ["a", "b"] });
  });

  it("sends anything else to the experiments list", () => {
    expect(parseRoute("")).toEqual({ page: "experiments" });
    expect(parseRoute("#/nope/1/2")).toEqual({ page: "experiments" });
    expect(parseRoute("#/workers/1")).toEqual({ page: "experiments" });
  });

  it("round-trips ids, commas included", () => {
    const routes: Route[] = [
      { page: "run", id: "a b/c" },
      { page: "job", id: "j/1" },
      { page: "deployment", id: "d 1" },
      { page: "compare", ids: ["a,1", "b/2", "c"] },
    ];
    for (const route of routes) expect(parseRoute(href(route))).toEqual(route);
  });
});
