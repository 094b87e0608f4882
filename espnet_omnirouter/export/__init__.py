"""ONNX export of ASR models with our encoders (so far the encoder: ``export.encoder``)."""
