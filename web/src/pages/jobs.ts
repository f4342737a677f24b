// SCAFFOLD: replaced by the page's implementation.
import { h, type Dispose } from "../dom";

export function jobsPage(root: HTMLElement): Dispose {
  root.append(h("h1", {}, "Training jobs"));
  return () => {};
}
