import { describe, expect, it } from "vitest";
import { ApiError, errorFromBody, readNdjson } from "./api";

function stream(chunks: string[]): ReadableStream<Uint8Array> {
  const bytes = new TextEncoder();
  return new ReadableStream({
    start(controller) {
      chunks.forEach((c) => controller.enqueue(bytes.encode(c)));
      controller.close();
    },
  });
}

describe("errorFromBody", () => {
  it("reads a google.rpc.Status", () => {
    const err = errorFromBody(401, '{"code": 16, "message": "bad key", "details": []}');
    expect(err).toBeInstanceOf(ApiError);
    expect([err.httpStatus, err.code, err.message]).toEqual([401, 16, "bad key"]);
  });

  it("takes a body that is not JSON as the message", () => {
    expect(errorFromBody(503, "upstream connect error").message).toBe("upstream connect error");
    expect(errorFromBody(502, "").message).toBe("HTTP 502");
  });
});

describe("readNdjson", () => {
  it("yields one item per line, whatever the chunking", async () => {
    const items: unknown[] = [];
    await readNdjson(stream(['{"a":', '1}\n{"a":2}\n\n{"a"', ":3}"]), (x) => items.push(x));
    expect(items).toEqual([{ a: 1 }, { a: 2 }, { a: 3 }]);
  });

  it("keeps a character split between chunks", async () => {
    const bytes = new TextEncoder().encode('{"k":"é"}\n');
    const split = new ReadableStream<Uint8Array>({
      start(c) {
        c.enqueue(bytes.slice(0, 8)); // inside the two bytes of "é"
        c.enqueue(bytes.slice(8));
        c.close();
      },
    });
    const items: unknown[] = [];
    await readNdjson(split, (x) => items.push(x));
    expect(items).toEqual([{ k: "é" }]);
  });

  it("throws a status line (a stream that failed after it started)", async () => {
    const items: unknown[] = [];
    const failing = stream(['{"type":"status"}\n', '{"code":8,"message":"fell behind"}\n']);
    await expect(readNdjson(failing, (x) => items.push(x))).rejects.toMatchObject({ code: 8, message: "fell behind" });
    expect(items).toHaveLength(1);
  });
});
