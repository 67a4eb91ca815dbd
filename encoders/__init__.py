"""Encoders: preprocessing, the encoder registry, checked ONNX export, ONNX Runtime sessions."""
