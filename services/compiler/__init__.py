"""The compiler service: DSL source -> validated IR -> code or ONNX, with a model registry."""
