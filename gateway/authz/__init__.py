"""The authz service: Envoy's ext_authz Check, the API keys it owns, and AuthService."""
