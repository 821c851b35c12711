"""Batched image classification (ONNX Runtime, TensorRT), model cards, CAM maths and the re-check."""
