"""ONNX export of ASR models with our encoders (``python -m espnet_omnirouter.bin.export_onnx``)."""
