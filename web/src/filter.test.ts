import { describe, expect, it } from "vitest";
import { ApiError, errorFromBody } from "./api";
import { caretLines, errorSelection, filterError } from "./filter";

// What the gateway answers for SearchRuns with filter "metrics.loss < < 1" (Envoy prints the
// google.rpc.Status with preserve_proto_field_names).
const body = JSON.stringify({
  code: 3,
  message: "filter: column 16: unexpected '<'",
  details: [
    {
      "@type": "type.googleapis.com/google.rpc.BadRequest",
      field_violations: [{ field: "filter", description: "column 16: unexpected '<'" }],
    },
  ],
});

describe("filterError", () => {
  it("reads the column and message from the BadRequest violation", () => {
    expect(filterError(errorFromBody(400, body))).toEqual({ message: "unexpected '<'", column: 16 });
  });

  it("reads the message alone when the details are missing", () => {
    const err = new ApiError(400, 3, "filter: column 7: unexpected end of filter");
    expect(filterError(err)).toEqual({ message: "unexpected end of filter", column: 7 });
  });

  it("accepts the JSON name fieldViolations", () => {
    const camel = body.replace("field_violations", "fieldViolations");
    expect(filterError(errorFromBody(400, camel))?.column).toBe(16);
  });

  it("gives no column for order_by's errors (their column is a placeholder)", () => {
    const err = new ApiError(400, 3, "filter: column 1: order_by 'x y z': use 'KEY [ASC|DESC]'", [
      { field: "order_by", description: "column 1: order_by 'x y z': use 'KEY [ASC|DESC]'" },
    ]);
    expect(filterError(err)).toEqual({ message: "order_by 'x y z': use 'KEY [ASC|DESC]'", column: null });
  });

  it("ignores errors that are not the filter's", () => {
    expect(filterError(new ApiError(401, 16, "bad key"))).toBeNull();
    expect(filterError(new ApiError(400, 3, "page_token: forged", [{ field: "page_token", description: "x" }]))).toBeNull();
    expect(filterError(new Error("network"))).toBeNull();
  });
});

describe("caretLines", () => {
  it("puts the caret under the column", () => {
    expect(caretLines("metrics.loss < < 1", 16)).toEqual(["metrics.loss < < 1", "               ^"]);
  });

  it("points just past the text at its end, and clamps what is out of range", () => {
    expect(caretLines("abc", 4)[1]).toBe("   ^");
    expect(caretLines("abc", 99)[1]).toBe("   ^");
    expect(caretLines("abc", 0)[1]).toBe("^");
  });

  it("keeps tabs from shifting the caret", () => {
    expect(caretLines("a\tb", 3)).toEqual(["a b", "  ^"]);
  });
});

describe("errorSelection", () => {
  it("selects the word the error starts at", () => {
    expect(errorSelection("params.lr = 0.1 nonsense", 17)).toEqual([16, 24]);
  });

  it("selects nothing at the end", () => {
    expect(errorSelection("abc", 4)).toEqual([3, 3]);
  });
});
