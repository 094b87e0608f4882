"""Decode ASR models exported by ``python -m espnet_omnirouter.bin.export_onnx`` with onnxruntime.

Needs only numpy, onnxruntime and PyYAML (sentencepiece for bpe models): importing it loads
neither PyTorch nor ESPnet, so it runs where the model is deployed.
"""
from espnet_omnirouter_onnx.speech2text import Speech2Text

__all__ = ["Speech2Text"]
