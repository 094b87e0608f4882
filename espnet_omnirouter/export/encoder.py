"""Export an ESPnet ASR encoder (ours or ESPnet's) to ONNX with dynamic batch and time axes.

The graph is captured by ``torch.onnx.export(..., dynamo=True)`` (``torch.export``).  Our MoE
and Duo slots, within ``moe.experts.onnx_export_mode()``, take their traceable dispatch
(``moe.layer._dispatch_traceable``): each expert, or Duo path, runs on its own frames only
(found by ``nonzero``, so their counts are symbols of the graph) and a skip path computes
nothing; padded frames are never routed, as in PyTorch.  The exported encoder takes what
ESPnet's encoder takes after the frontend and normalisation:

* inputs ``feats`` ``[B, T, F]`` float32 and ``feats_length`` ``[B]`` int64, with
  ``T == max(feats_length)`` (as ESPnet's encoders require);
* outputs ``encoder_out`` ``[B, T', d]`` and ``encoder_out_lens`` ``[B]`` int64 (``T'``: after
  subsampling); frames past a row's length are undefined, as in PyTorch.
"""
from typing import Optional

import torch
from torch import nn

from espnet_omnirouter.encoders.contextual_block import is_streaming
from espnet_omnirouter.moe.duo import DuoFeedForward
from espnet_omnirouter.moe.experts import onnx_export_mode

INPUT_NAMES = ["feats", "feats_length"]
OUTPUT_NAMES = ["encoder_out", "encoder_out_lens"]
OPSET = 18
# Length of the example batch's rows that the graph is captured with (10 ms frames: 1.2 s
# and 0.9 s): any long enough to leave a few frames after 8x subsampling.
EXAMPLE_FRAMES = (120, 90)


class EncoderForExport(nn.Module):
    """``encoder(feats, feats_length)`` -> ``(encoder_out, encoder_out_lens)`` (ESPnet's
    encoders return a third, unused value: the states)."""

    def __init__(self, encoder: nn.Module):
        super().__init__()
        self.encoder = encoder

    def forward(self, feats: torch.Tensor, feats_length: torch.Tensor):
        out, out_lens, _ = self.encoder(feats, feats_length)
        return out, out_lens


def unsupported(encoder: nn.Module) -> Optional[str]:
    """Why ``encoder`` cannot be exported (None: it can), naming the option to change."""
    if is_streaming(encoder):
        return (f"{type(encoder).__name__} is a streaming (contextual-block) encoder: its block-wise "
                "decoding keeps state between calls, which this exporter does not build; export a "
                "full-utterance encoder")
    for name, module in encoder.named_modules():
        if isinstance(module, DuoFeedForward):
            policy = module.policy
            if policy.kind == "random":
                return (f"Duo slot {name} has the random policy (training stage 1): set a decoding "
                        "policy first (duo_policy: big, small, static or learned)")
            if isinstance(policy.path, torch.Tensor):
                return f"Duo slot {name} has a per-utterance path (the oracle study's): not exportable"
    return None


def export_encoder(encoder: nn.Module, path: str, input_size: int, opset: int = OPSET) -> None:
    """Write ``encoder`` (put in eval mode) to the ONNX file ``path`` (inputs ``INPUT_NAMES``).

    Args:
        encoder: an ESPnet ``AbsEncoder`` (ours or ESPnet's dense ones).
        path: output ``.onnx`` file.
        input_size: feature dimension ``F`` of ``feats``.
        opset: ONNX opset.

    Raises:
        ValueError: for an encoder or option that cannot be exported (:func:`unsupported`).
    """
    why = unsupported(encoder)
    if why is not None:
        raise ValueError(why)
    encoder.eval()
    lengths = torch.tensor(EXAMPLE_FRAMES)
    feats = torch.randn(len(EXAMPLE_FRAMES), int(lengths.max()), input_size)
    batch, time = torch.export.Dim("batch"), torch.export.Dim("time", min=16)
    with torch.no_grad(), onnx_export_mode():
        torch.onnx.export(
            EncoderForExport(encoder), (feats, lengths), path, dynamo=True, opset_version=opset,
            input_names=INPUT_NAMES, output_names=OUTPUT_NAMES,
            dynamic_shapes=({0: batch, 1: time}, {0: batch}), external_data=False, verbose=False,
        )
