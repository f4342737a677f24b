import { describe, expect, it } from "vitest";
import {
  compactJson, exampleInput, formatScore, hasCanary, jsonErrorOffset, outputRows, parsePredictInput, replicasText,
  reshape, settled, shortTime, sourceFrom, stateName, topClasses, trafficSegments, trafficText,
} from "./deployments";
import type { Deployment, DeploymentVersion } from "./deployments_api";

describe("parsePredictInput", () => {
  it("takes the request's body as it is", () => {
    expect(parsePredictInput('{"instances": [[1, 2], [3, 4]]}')).toEqual({ ok: true, body: { instances: [[1, 2], [3, 4]] } });
    const inputs = [{ name: "x", shape: ["1", "2"], dtype: "float32", float_data: [1, 2] }];
    expect(parsePredictInput(JSON.stringify({ inputs }))).toEqual({ ok: true, body: { inputs } });
  });

  it("takes a bare array as the rows", () => {
    expect(parsePredictInput(" [[0.5, 1]] \n")).toEqual({ ok: true, body: { instances: [[0.5, 1]] } });
  });

  it("says where JSON breaks, with no request made of it", () => {
    const parsed = parsePredictInput('{"instances": [[1, 2,]]}');
    expect(parsed.ok).toBe(false);
    if (!parsed.ok) {
      expect(parsed.message).toMatch(/^Not valid JSON: /);
      expect(parsed.message).toMatch(/line 1/);
    }
    const multi = parsePredictInput('{\n  "instances": [\n    [1, 2\n  ]\n}');
    expect(!multi.ok && multi.message).toMatch(/line 5, column 1/);
    expect(jsonErrorOffset('{\n  "instances": [\n    [1, 2\n  ]\n}')).toBe(33);
  });

  it("refuses what is JSON but no request", () => {
    const message = (text: string) => {
      const p = parsePredictInput(text);
      return p.ok ? "" : p.message;
    };
    expect(message("")).toMatch(/Enter the input/);
    expect(message("42")).toMatch(/Expected an object/);
    expect(message('"rows"')).toMatch(/Expected an object/);
    expect(message("null")).toMatch(/Expected an object/);
    expect(message('{"rows": [[1]]}')).toBe('Unknown field "rows": give "instances" or "inputs".');
    expect(message('{"instances": [[1]], "inputs": []}')).toMatch(/exactly one/);
    expect(message('{"instances": 3}')).toBe('"instances" must be an array.');
    expect(message("{}")).toMatch(/exactly one/);
  });
});

describe("jsonErrorOffset", () => {
  it("is null for JSON, and agrees with JSON.parse on what is JSON", () => {
    const good = ['{"a": [1, -2.5e3, true, false, null, "x\\"\\u00e9"]}', " [] ", "0", '{"k": {}}', "[1e5, 0.5, -0]"];
    for (const text of good) {
      expect(() => JSON.parse(text)).not.toThrow();
      expect(jsonErrorOffset(text)).toBeNull();
    }
  });

  it("points at the token where it stops being JSON", () => {
    const cases: [string, number][] = [
      ["[1, 2,]", 6], ["[1 2]", 3], ['{"a" 1}', 5], ["{a: 1}", 1], ["[01]", 2], ["[tru]", 1],
      ["[1, 2", 5], ['"open', 0], ["[1] x", 4], ["", 0], ["[-]", 1], ['["\\q"]', 1],
      // what JSONC or JavaScript would take, JSON does not
      ["[1, /* c */ 2]", 4], ["['a']", 1], ["[.5]", 1], ["[NaN]", 1], ["[0x10]", 2], ['["a\tb"]', 1],
    ];
    for (const [text, at] of cases) {
      expect(() => JSON.parse(text)).toThrow();
      expect([text, jsonErrorOffset(text)]).toEqual([text, at]);
    }
  });
});

describe("exampleInput", () => {
  it("is one row of zeros of the input's shape, the batch left out", () => {
    const text = exampleInput([-1, 4]);
    expect(JSON.parse(text)).toEqual({ instances: [[0, 0, 0, 0]] });
    expect(text.split("\n")).toHaveLength(3); // the row stays on one line
    expect(JSON.parse(exampleInput([-1, 2, 3]))).toEqual({ instances: [[[0, 0, 0], [0, 0, 0]]] });
  });

  it("takes an unknown dimension as 1 and a shapeless model as an empty row to fill", () => {
    expect(JSON.parse(exampleInput([-1, -1, 2]))).toEqual({ instances: [[[0, 0]]] });
    expect(JSON.parse(exampleInput(null))).toEqual({ instances: [[]] });
    expect(JSON.parse(exampleInput([-1]))).toEqual({ instances: [0] });
  });

  it("parses back into the request it shows", () => {
    const parsed = parsePredictInput(exampleInput([-1, 64]));
    expect(parsed.ok && (parsed.body.instances?.[0] as number[]).length).toBe(64);
  });
});

describe("compactJson", () => {
  it("puts arrays of numbers on one line and nests the rest", () => {
    expect(compactJson([[1, 2], [3, 4]])).toBe("[\n  [1,2],\n  [3,4]\n]");
    expect(compactJson({ a: [1], b: { c: "x" } })).toBe('{\n  "a": [1],\n  "b": {\n    "c": "x"\n  }\n}');
    expect(JSON.parse(compactJson([[[0.25]], [[1e-9]]]))).toEqual([[[0.25]], [[1e-9]]]);
  });
});

describe("topClasses", () => {
  const softmax = { name: "y", shape: ["2", "4"], dtype: "float32", float_data: [0.1, 0.7, 0.15, 0.05, 0.6, 0.1, 0.1, 0.2] };

  it("ranks each row's classes, best first", () => {
    const rows = topClasses(softmax, 2)!;
    expect(rows.map((r) => r.top.map((t) => t.index))).toEqual([[1, 2], [0, 3]]);
    expect(rows.every((r) => r.probabilities)).toBe(true);
    expect(rows[0].top[0].value).toBeCloseTo(0.7);
  });

  it("tells scores that are no probabilities, and ties go to the lower class", () => {
    const logits = { shape: ["1", "3"], float_data: [2.5, -1, 2.5] };
    const [row] = topClasses(logits)!;
    expect(row.probabilities).toBe(false);
    expect(row.top.map((t) => t.index)).toEqual([0, 2, 1]);
  });

  it("reads int64 outputs, and is no ranking for other shapes", () => {
    expect(topClasses({ shape: ["1", "2"], int64_data: ["3", "9"] })![0].top[0]).toEqual({ index: 1, value: 9 });
    expect(topClasses({ shape: ["3"], float_data: [1, 2, 3] })).toBeNull();
    expect(topClasses({ shape: ["3", "1"], float_data: [1, 2, 3] })).toBeNull();
    expect(topClasses({ shape: ["2", "2"], float_data: [1, 2, 3] })).toBeNull(); // values missing
  });
});

describe("formatScore", () => {
  it("shows probabilities as percentages and scores to 4 digits", () => {
    expect(formatScore(0.912, true)).toBe("91.2%");
    expect(formatScore(0.99999, true)).toBe("100%");
    expect(formatScore(0.0001, true)).toBe("0%");
    expect(formatScore(3.14159, false)).toBe("3.142");
    expect(formatScore(7, false)).toBe("7");
  });
});

describe("outputRows", () => {
  it("shows the predictions when the server sent rows", () => {
    expect(outputRows({ predictions: [[0.5, 0.5]], outputs: [{ shape: ["1", "2"], float_data: [0.5, 0.5] }] }))
      .toEqual([[0.5, 0.5]]);
  });

  it("reshapes the tensors otherwise, by name when there are several", () => {
    expect(outputRows({ outputs: [{ shape: ["2", "2"], float_data: [1, 2, 3, 4] }] })).toEqual([[1, 2], [3, 4]]);
    expect(outputRows({ outputs: [{ name: "a", shape: ["1"], float_data: [1] }, { name: "b", shape: [], int64_data: ["7"] }] }))
      .toEqual({ a: [1], b: 7 });
    expect(reshape([1, 2, 3, 4, 5, 6], [2, 1, 3])).toEqual([[[1, 2, 3]], [[4, 5, 6]]]);
  });
});

describe("traffic", () => {
  const versions: DeploymentVersion[] = [
    { id: "v3", traffic_percent: 10, state: "DEPLOYMENT_VERSION_STATE_PENDING" },
    { id: "v2", traffic_percent: 90, state: "DEPLOYMENT_VERSION_STATE_SERVING" },
    { id: "v1", traffic_percent: 0, state: "DEPLOYMENT_VERSION_STATE_RETIRED" },
  ];

  it("lists the versions that take traffic, oldest first", () => {
    expect(trafficSegments(versions)).toEqual([
      { version: "v2", percent: 90, state: "SERVING" },
      { version: "v3", percent: 10, state: "PENDING" },
    ]);
    expect(trafficText(versions)).toBe("v2 90% · v3 10%");
    expect(trafficText([])).toBe("no traffic");
    expect(trafficSegments([{ id: "v10", traffic_percent: 5 }, { id: "v9", traffic_percent: 95 }]).map((s) => s.version))
      .toEqual(["v9", "v10"]);
  });

  it("tells a canary from a lone version", () => {
    const base: Deployment = { id: "d", name: "n", model_version: "v2" };
    expect(hasCanary({ ...base, versions })).toBe(true);
    expect(hasCanary({ ...base, versions: versions.slice(1) })).toBe(false);
    // a replacement (100%) starting, and a canary rolled back that drains, are no canary
    const replacing = [{ id: "v3", traffic_percent: 100, state: "DEPLOYMENT_VERSION_STATE_PENDING" as const },
      { ...versions[1], traffic_percent: 0 }];
    expect(hasCanary({ ...base, versions: replacing })).toBe(false);
    const failed = [{ ...versions[0], state: "DEPLOYMENT_VERSION_STATE_FAILED" as const }, versions[1]];
    expect(hasCanary({ ...base, versions: failed })).toBe(false);
  });
});

describe("deployment state", () => {
  const ready: Deployment = {
    id: "d", name: "n", state: "DEPLOYMENT_STATE_READY", replicas: 2, ready_replicas: 2,
    versions: [{ id: "v1", traffic_percent: 100, state: "DEPLOYMENT_VERSION_STATE_SERVING" }],
  };

  it("names states without their enum prefix", () => {
    expect(stateName("DEPLOYMENT_STATE_READY")).toBe("READY");
    expect(stateName("DEPLOYMENT_VERSION_STATE_RETIRED")).toBe("RETIRED");
    expect(stateName(undefined)).toBe("UNSPECIFIED");
  });

  it("shows ready of desired replicas, with an autoscaler's bounds", () => {
    expect(replicasText(ready)).toBe("2/2");
    expect(replicasText({ id: "d", name: "n" })).toBe("0/1");
    expect(replicasText({ ...ready, ready_replicas: 0, replicas: 0, min_replicas: 0, max_replicas: 3 })).toBe("0/0 (autoscaled 0–3)");
  });

  it("is settled once every wanted replica serves and nothing is starting", () => {
    expect(settled(ready)).toBe(true);
    expect(settled({ ...ready, state: "DEPLOYMENT_STATE_PENDING", ready_replicas: 0 })).toBe(false);
    expect(settled({ ...ready, ready_replicas: 1 })).toBe(false);
    expect(settled({ ...ready, state: "DEPLOYMENT_STATE_DELETING" })).toBe(false);
    expect(settled({ ...ready, state: "DEPLOYMENT_STATE_FAILED", ready_replicas: 0 })).toBe(true);
    const canary = [{ id: "v2", traffic_percent: 10, state: "DEPLOYMENT_VERSION_STATE_PENDING" as const }, ...ready.versions!];
    expect(settled({ ...ready, versions: canary })).toBe(false);
    const draining = [{ id: "v2", traffic_percent: 100, state: "DEPLOYMENT_VERSION_STATE_SERVING" as const },
      { id: "v1", traffic_percent: 0, state: "DEPLOYMENT_VERSION_STATE_SERVING" as const }];
    expect(settled({ ...ready, versions: draining })).toBe(false);
    expect(settled({ ...ready, versions: [draining[0], { ...draining[1], state: "DEPLOYMENT_VERSION_STATE_RETIRED" }] }))
      .toBe(true);
  });
});

describe("shortTime", () => {
  it("drops the fraction and the zone letter", () => {
    expect(shortTime("2026-11-29T21:03:34.398833Z")).toBe("2026-11-29 21:03:34");
    expect(shortTime("2026-11-29T21:03:34Z")).toBe("2026-11-29 21:03:34");
    expect(shortTime(undefined)).toBe("");
  });
});

describe("sourceFrom", () => {
  it("is a run's artifact (model.onnx unless told) or a registry model", () => {
    expect(sourceFrom(" r1 ", "", "")).toEqual({ run_artifact: { run_id: "r1", path: "model.onnx" } });
    expect(sourceFrom("r1", "out/m.onnx", "")).toEqual({ run_artifact: { run_id: "r1", path: "out/m.onnx" } });
    expect(sourceFrom("", "model.onnx", "m1")).toEqual({ model_id: "m1" });
  });

  it("says what is missing or too much", () => {
    expect(sourceFrom("", "model.onnx", "")).toMatch(/Give the run/);
    expect(sourceFrom("r1", "model.onnx", "m1")).toMatch(/not both/);
  });
});
