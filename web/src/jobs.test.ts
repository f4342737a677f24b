import { describe, expect, it } from "vitest";
import {
  ago, EXAMPLE_SOURCE, epochsDone, epochsTotal, formFieldOf, isActive, mergeJobs, percent, progressText, runIdOf, stateName,
  trainingRequest, type TrainingForm,
} from "./jobs";
import type { Job } from "./jobs_api";

const job = (id: string, created: string, extra: Partial<Job> = {}): Job => ({
  id, kind: "training", state: "JOB_STATE_QUEUED", create_time: created, ...extra,
});

describe("a job's state and progress", () => {
  it("tells queued and running jobs from ended ones", () => {
    expect(["JOB_STATE_QUEUED", "JOB_STATE_RUNNING"].map((s) => isActive(s as Job["state"]))).toEqual([true, true]);
    expect(["JOB_STATE_SUCCEEDED", "JOB_STATE_FAILED", "JOB_STATE_CANCELLED"].some((s) => isActive(s as Job["state"]))).toBe(false);
    expect(isActive(undefined)).toBe(false);
    expect(stateName("JOB_STATE_CANCELLED")).toBe("cancelled");
    expect(stateName(undefined)).toBe("unspecified");
  });

  it("clamps and rounds progress to a percentage", () => {
    expect([percent(0.375), percent(1.2), percent(-1), percent(undefined), percent(Number.NaN)]).toEqual([38, 100, 0, 0, 0]);
  });

  it("says the epoch, with the total when known", () => {
    expect(progressText("JOB_STATE_RUNNING", 0.375, 3, 8)).toBe("epoch 3/8 · 38%");
    expect(progressText("JOB_STATE_RUNNING", 0.4, 3)).toBe("epoch 3 · 40%");
    expect(progressText("JOB_STATE_RUNNING", 0.05, 0)).toBe("5%");
    expect(progressText("JOB_STATE_QUEUED", 0, 0, 8)).toBe("waiting for a worker");
  });

  it("reads the total from the job's details", () => {
    expect(epochsTotal(job("j", "", { details: { epochs_done: 3, epochs: 8 } }))).toBe(8);
    expect(epochsTotal(job("j", "", { details: { epochs: "8" } }))).toBe(0);
    expect(epochsTotal(job("j", ""))).toBe(0);
  });

  it("finds the run in the details, or in the result at the end", () => {
    expect(runIdOf(job("j", "", { details: { run_id: "r1" } }))).toBe("r1");
    expect(runIdOf(job("j", "", { result: "runs/r2" }))).toBe("r2");
    expect(runIdOf(job("j", "", { result: "models/m" }))).toBe("");
    expect(epochsDone(job("j", "", { details: { epochs_done: 4, epoch: 4 } }))).toBe(4);
    expect(epochsDone(job("j", ""))).toBe(0);
  });

  it("says how long ago, roughly", () => {
    const now = Date.parse("2026-01-01T12:00:00Z");
    expect(ago("2026-01-01T11:59:55Z", now)).toBe("5 s ago");
    expect(ago("2026-01-01T11:57:00Z", now)).toBe("3 min ago");
    expect(ago("2026-01-01T09:00:00Z", now)).toBe("3 h ago");
    expect(ago("2025-12-30T12:00:00Z", now)).toBe("2 d ago");
    expect(ago(undefined, now)).toBe("never");
  });
});

describe("mergeJobs", () => {
  it("takes the fresh page's jobs as they are now and keeps older pages, newest first", () => {
    const shown = [
      job("b", "2026-01-01T00:00:02Z", { state: "JOB_STATE_RUNNING" }),
      job("a", "2026-01-01T00:00:01Z"),
    ];
    const fresh = [job("c", "2026-01-01T00:00:03Z"), job("b", "2026-01-01T00:00:02Z", { state: "JOB_STATE_SUCCEEDED" })];
    const merged = mergeJobs(shown, fresh);
    expect(merged.map((j) => j.id)).toEqual(["c", "b", "a"]);
    expect(merged[1].state).toBe("JOB_STATE_SUCCEEDED");
  });

  it("keeps the server's order for jobs created in the same instant", () => {
    const t = "2026-01-01T00:00:00Z";
    expect(mergeJobs([], [job("x", t), job("y", t), job("z", t)]).map((j) => j.id)).toEqual(["x", "y", "z"]);
  });
});

describe("the New training form", () => {
  const form = (extra: Partial<TrainingForm> = {}): TrainingForm => ({
    source: EXAMPLE_SOURCE, network: "", backend: "TRAINING_BACKEND_PYTORCH", dataset: "builtin:BUILTIN_DATASET_DIGITS",
    epochs: "", batch_size: "", learning_rate: "", experiment: "", webhook_url: "", webhook_secret: "", ...extra,
  });

  it("sends only what was filled in, as the API names it", () => {
    expect(trainingRequest(form())).toEqual({
      request: { source: EXAMPLE_SOURCE, backend: "TRAINING_BACKEND_PYTORCH", dataset: { builtin: "BUILTIN_DATASET_DIGITS" } },
      errors: [],
    });
    const { request } = trainingRequest(form({
      epochs: "3", batch_size: "16", learning_rate: "0.01", experiment: " mine ", network: "Digits",
      dataset: "dataset:ab:cd", webhook_url: "https://example.com/h", webhook_secret: "0123456789abcdef",
    }));
    expect(request).toMatchObject({
      epochs: 3, batch_size: 16, learning_rate: 0.01, experiment: "mine", network: "Digits",
      dataset: { dataset_id: "ab:cd" }, webhooks: [{ url: "https://example.com/h", secret: "0123456789abcdef" }],
    });
  });

  it("names each wrong field with the server's limits, and sends nothing", () => {
    const { request, errors } = trainingRequest(form({
      source: "  ", epochs: "0", batch_size: "1.5", learning_rate: "11", dataset: "builtin:NOPE",
      webhook_url: "ftp://x", webhook_secret: "short",
    }));
    expect(request).toBeUndefined();
    expect(errors.map((e) => e.field)).toEqual([
      "source", "dataset", "epochs", "batch_size", "learning_rate", "webhooks[0].url", "webhooks[0].secret",
    ]);
    expect(errors.find((e) => e.field === "epochs")?.description).toBe("a whole number between 1 and 10000");
  });

  it("wants a URL with a webhook secret", () => {
    expect(trainingRequest(form({ webhook_secret: "0123456789abcdef" })).errors.map((e) => e.field)).toEqual(["webhooks[0].url"]);
  });

  it("puts each server violation next to its input", () => {
    expect(formFieldOf("source:3:5")).toBe("source");
    expect(formFieldOf("model")).toBe("source");
    expect(formFieldOf("dataset.builtin")).toBe("dataset");
    expect(formFieldOf("dataset")).toBe("dataset");
    expect(formFieldOf("webhooks[0].secret")).toBe("webhook_secret");
    expect(formFieldOf("webhooks[1].url")).toBe("webhook_url");
    expect(formFieldOf("webhooks")).toBe("webhook_url");
    expect(formFieldOf("epochs")).toBe("epochs");
    expect(formFieldOf("hparams.layers")).toBe("");
  });
});
