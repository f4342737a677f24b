/// <reference types="node" />
/// <reference types="vitest/config" />
import { defineConfig } from "vite";

// The dev server (`npm run dev`) sends API calls to a running gateway, so the app talks to the
// platform the same way as when Envoy serves dist/ at `/` (same origin, no CORS).
const gateway = process.env.NEURAL_GATEWAY_URL ?? "http://127.0.0.1:8080";

export default defineConfig({
  base: "/",
  build: { outDir: "dist", emptyOutDir: true },
  server: { proxy: { "/v1": { target: gateway, changeOrigin: true } } },
  test: { environment: "node", include: ["src/**/*.test.ts"] },
});
