// SCAFFOLD: replaced by the page's implementation.
import { h, type Dispose } from "../dom";

export function comparePage(root: HTMLElement, ids: string[]): Dispose {
  root.append(h("h1", {}, "Compare runs"), h("p", {}, ids.join(", ")));
  return () => {};
}
