"""One model replica: a process serving one ONNX model over the Open Inference Protocol V2
(`python -m services.deployer.replica --model PATH --model-name NAME --model-version V`),
started and watched by the deployer's controller."""
