// SCAFFOLD: replaced by the page's implementation.
import { h, type Dispose } from "../dom";

export function deploymentsPage(root: HTMLElement): Dispose {
  root.append(h("h1", {}, "Deployments"));
  return () => {};
}
