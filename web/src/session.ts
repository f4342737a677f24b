// The signed-in API key and who it says we are. The key lives in sessionStorage: it goes with
// the tab and is never written to disk by the app (nor sent anywhere but the gateway's /v1).

import type { Principal } from "./api";

const KEY = "neural.apiKey";
let principal: Principal | null = null;

export const getKey = (): string | null => sessionStorage.getItem(KEY);

/** The key calls carry from now on; who it is comes from whoami (setPrincipal). */
export function setKey(key: string): void {
  sessionStorage.setItem(KEY, key);
  principal = null;
}

export function signOut(): void {
  sessionStorage.removeItem(KEY);
  principal = null;
}

export const currentPrincipal = (): Principal | null => principal;
export const setPrincipal = (who: Principal): void => {
  principal = who;
};

/** Viewers only read: pages render no element that writes (`data-write`) for them. */
export const canWrite = (who: Principal | null = principal): boolean =>
  who !== null && (who.role === "ROLE_USER" || who.role === "ROLE_ADMIN");
