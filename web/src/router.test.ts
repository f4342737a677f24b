import { describe, expect, it } from "vitest";
import { href, parseRoute } from "./router";

describe("router", () => {
  it("reads each page's hash", () => {
    expect(parseRoute("#/signin")).toEqual({ page: "signin" });
    expect(parseRoute("#/experiments")).toEqual({ page: "experiments" });
    expect(parseRoute("#/experiments/abc")).toEqual({ page: "experiment", id: "abc" });
    expect(parseRoute("#/runs/r%2F1")).toEqual({ page: "run", id: "r/1" });
  });

  it("sends anything else to the experiments list", () => {
    expect(parseRoute("")).toEqual({ page: "experiments" });
    expect(parseRoute("#/nope/1/2")).toEqual({ page: "experiments" });
  });

  it("round-trips ids", () => {
    const route = { page: "run" as const, id: "a b/c" };
    expect(parseRoute(href(route))).toEqual(route);
  });
});
