"""The deployer: ONNX models served by replica processes, reconciled by a controller."""
