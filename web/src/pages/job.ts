// SCAFFOLD: replaced by the page's implementation.
import { h, type Dispose } from "../dom";

export function jobPage(root: HTMLElement, id: string): Dispose {
  root.append(h("h1", {}, "Training job ", id));
  return () => {};
}
