// SCAFFOLD: replaced by the page's implementation.
import { h, type Dispose } from "../dom";

export function workersPage(root: HTMLElement): Dispose {
  root.append(h("h1", {}, "Workers"));
  return () => {};
}
