import { whoami } from "../api";
import { errorText, h, type Dispose } from "../dom";
import { setKey, setPrincipal, signOut } from "../session";

export function signinPage(root: HTMLElement, done: () => void): Dispose {
  const why = sessionStorage.getItem("neural.signinMessage") ?? "";
  sessionStorage.removeItem("neural.signinMessage");
  const input = h("input", {
    "data-testid": "api-key", type: "password", autocomplete: "off", placeholder: "nk_...", size: 48,
  });
  const error = h("p", { "data-testid": "signin-error", class: "error" }, why);
  const button = h("button", { "data-testid": "sign-in", type: "submit" }, "Sign in");
  const form = h("form", { class: "signin" }, h("h1", {}, "Sign in"),
    h("label", {}, "API key ", input), button, error);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const key = input.value.trim();
    if (!key) {
      error.textContent = "Enter an API key.";
      return;
    }
    button.disabled = true;
    error.textContent = "";
    try {
      // whoami both checks the key and says the role the pages need.
      setKey(key);
      setPrincipal(await whoami());
      done();
    } catch (err) {
      signOut();
      error.textContent = errorText(err);
    } finally {
      button.disabled = false;
    }
  });
  root.append(form);
  input.focus();
  return () => {};
}
