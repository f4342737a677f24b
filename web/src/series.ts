// One metric's points for a chart: the server's downsampled history merged with the points
// WatchRun streams afterwards, in step order, one point per step, and bounded so a run that
// logs for days never grows the page's memory or the chart's drawing time without end.

export class Series {
  readonly steps: number[] = [];
  readonly values: number[] = [];

  /** cap: the most points kept; over it the series is thinned to about half (see thin()). */
  constructor(readonly cap = 4000) {
    if (cap < 4) throw new Error("cap must be at least 4");
  }

  get length(): number {
    return this.steps.length;
  }

  /**
   * Adds points in any order. A step already present takes the newer value: the watch may
   * resend a step the history already held (the watch starts before the history is read, so
   * that no point falls between the two).
   */
  add(steps: ArrayLike<number | string>, values: ArrayLike<number>): void {
    for (let i = 0; i < steps.length; i++) this.put(Number(steps[i]), values[i]);
    if (this.steps.length > this.cap) this.thin();
  }

  private put(step: number, value: number): void {
    const n = this.steps.length;
    if (n === 0 || step > this.steps[n - 1]) {
      // The common case: live points arrive after everything held.
      this.steps.push(step);
      this.values.push(value);
      return;
    }
    const i = lowerBound(this.steps, step);
    if (this.steps[i] === step) this.values[i] = value;
    else {
      this.steps.splice(i, 0, step);
      this.values.splice(i, 0, value);
    }
  }

  /**
   * Halves the series, keeping the first and the last point and, of each pair between, the
   * one further from its neighbours' mean, so that spikes survive the thinning. The history is
   * already a sample (M4 over the steps), so the chart stays a faithful outline.
   */
  private thin(): void {
    const steps = [this.steps[0]];
    const values = [this.values[0]];
    const last = this.steps.length - 1;
    for (let i = 1; i < last; i += 2) {
      const j = i + 1 < last ? pickOfPair(this.values, i) : i;
      steps.push(this.steps[j]);
      values.push(this.values[j]);
    }
    steps.push(this.steps[last]);
    values.push(this.values[last]);
    this.steps.splice(0, this.steps.length, ...steps);
    this.values.splice(0, this.values.length, ...values);
  }
}

function pickOfPair(values: number[], i: number): number {
  const mean = (values[i - 1] + values[i + 2]) / 2;
  return Math.abs(values[i] - mean) >= Math.abs(values[i + 1] - mean) ? i : i + 1;
}

/** The first index whose step is >= step. */
function lowerBound(steps: number[], step: number): number {
  let lo = 0;
  let hi = steps.length;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (steps[mid] < step) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}
