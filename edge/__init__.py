"""edgeloop's edge runtime: loads a signed bundle and answers with ONNX Runtime, without torch."""
