// SCAFFOLD: replaced by the page's implementation.
import { h, type Dispose } from "../dom";

export function deploymentPage(root: HTMLElement, id: string): Dispose {
  root.append(h("h1", {}, "Deployment ", id));
  return () => {};
}
