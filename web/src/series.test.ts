import { describe, expect, it } from "vitest";
import { Series } from "./series";

describe("Series", () => {
  it("merges history and live points in step order, one point per step", () => {
    const s = new Series();
    s.add(["0", "10", "20"], [1, 0.8, 0.6]); // the history (int64 steps are strings in JSON)
    s.add([20, 30], [0.55, 0.5]); // the watch resends step 20, then goes on
    s.add([5], [0.9]); // a late point lands in order
    expect(s.steps).toEqual([0, 5, 10, 20, 30]);
    expect(s.values).toEqual([1, 0.9, 0.8, 0.55, 0.5]);
  });

  it("keeps the newest value of a step", () => {
    const s = new Series();
    s.add([1, 1, 1], [3, 2, 1]);
    expect(s.steps).toEqual([1]);
    expect(s.values).toEqual([1]);
  });

  it("stays under its cap, keeping the first and last points", () => {
    const s = new Series(100);
    for (let step = 0; step < 10_000; step++) s.add([step], [Math.sin(step)]);
    expect(s.length).toBeLessThanOrEqual(100);
    expect(s.length).toBeGreaterThan(25);
    expect(s.steps[0]).toBe(0);
    expect(s.steps[s.length - 1]).toBe(9999);
    for (let i = 1; i < s.length; i++) expect(s.steps[i]).toBeGreaterThan(s.steps[i - 1]);
  });

  it("keeps a spike through thinning", () => {
    const s = new Series(8);
    const values = [0, 0, 0, 0, 0, 100, 0, 0, 0];
    s.add(values.map((_, i) => i), values);
    expect(s.length).toBeLessThanOrEqual(8);
    expect(s.values).toContain(100);
    expect(s.steps[s.values.indexOf(100)]).toBe(5);
  });

  it("refuses a cap too small to hold a first and last point", () => {
    expect(() => new Series(2)).toThrow();
  });
});
