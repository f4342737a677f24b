"""The gateway: Envoy's configuration and the authz and rate-limit services behind it."""
