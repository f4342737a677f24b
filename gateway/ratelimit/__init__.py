"""The rate-limit service Envoy's global ratelimit filter asks about every call: sliding
windows in Redis, limits from a YAML file (see limits.yaml)."""
