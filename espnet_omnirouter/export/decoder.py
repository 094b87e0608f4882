"""Export an ESPnet ASR model's CTC and attention decoder to ONNX (the beam search's scorers).

* ``ctc.onnx``: ``encoder_out`` ``[B, T', d]`` -> ``ctc_logp`` ``[B, T', V]`` (``ctc.log_softmax``).
* ``decoder.onnx``: one step of ESPnet's Transformer decoder with its cache, as ESPnet's
  ``batch_score`` runs it: inputs ``ys`` ``[N, L]`` int64 (the N hypotheses' prefixes, ``<sos>``
  first), ``memory`` ``[N, T', d]``, ``cache_<i>`` ``[N, L - 1, d]`` for each decoder block ``i``
  (length 0 at the first step); outputs ``logp`` ``[N, V]`` (log-probabilities of the next token)
  and ``new_cache_<i>`` ``[N, L, d]``.
"""
from typing import Optional

import torch
from torch import nn

CTC_INPUT_NAMES, CTC_OUTPUT_NAMES = ["encoder_out"], ["ctc_logp"]
# Example shapes the graphs are captured with (any with a few hypotheses and frames).
EXAMPLE_HYPS, EXAMPLE_PREFIX, EXAMPLE_FRAMES = 3, 4, 20


def unsupported_decoder(decoder: nn.Module) -> Optional[str]:
    """Why ``decoder`` cannot be exported (None: it can), naming the YAML key."""
    from espnet2.asr.decoder.transformer_decoder import BaseTransformerDecoder

    if not isinstance(decoder, BaseTransformerDecoder):
        return f"decoder: {type(decoder).__name__} is not exportable (supported: ESPnet's Transformer decoders)"
    return None


def decoder_names(n_blocks: int) -> tuple:
    """``(input_names, output_names)`` of ``decoder.onnx`` for ``n_blocks`` decoder blocks."""
    caches = [f"cache_{i}" for i in range(n_blocks)]
    return ["ys", "memory", *caches], ["logp", *[f"new_{c}" for c in caches]]


class DecoderStepForExport(nn.Module):
    """``(ys, memory, *cache)`` -> ``(logp, *new_cache)``: ``forward_one_step`` with the
    causal mask built inside the graph."""

    def __init__(self, decoder: nn.Module):
        super().__init__()
        self.decoder = decoder

    def forward(self, ys: torch.Tensor, memory: torch.Tensor, *cache: torch.Tensor):
        length = ys.shape[1]
        mask = torch.tril(torch.ones(length, length, dtype=torch.bool, device=ys.device))[None]
        logp, new_cache = self.decoder.forward_one_step(ys, mask, memory, cache=list(cache))
        return (logp, *new_cache)


class CTCForExport(nn.Module):
    def __init__(self, ctc: nn.Module):
        super().__init__()
        self.ctc = ctc

    def forward(self, encoder_out: torch.Tensor) -> torch.Tensor:
        return self.ctc.log_softmax(encoder_out)


def export_ctc(ctc: nn.Module, path: str, encoder_size: int, opset: int) -> None:
    """Write ``ctc.log_softmax`` to ``path`` (dynamic batch and frames)."""
    x = torch.randn(2, EXAMPLE_FRAMES, encoder_size)
    batch, frames = torch.export.Dim("batch"), torch.export.Dim("frames")
    with torch.no_grad():
        torch.onnx.export(
            CTCForExport(ctc).eval(), (x,), path, dynamo=True, opset_version=opset,
            input_names=CTC_INPUT_NAMES, output_names=CTC_OUTPUT_NAMES,
            dynamic_shapes=({0: batch, 1: frames},), external_data=False, verbose=False,
        )


def export_decoder(decoder: nn.Module, path: str, encoder_size: int, vocab_size: int, opset: int) -> None:
    """Write one cached decoder step to ``path`` (inputs and outputs: :func:`decoder_names`).

    Raises:
        ValueError: for a decoder that cannot be exported (:func:`unsupported_decoder`).
    """
    why = unsupported_decoder(decoder)
    if why is not None:
        raise ValueError(why)
    n_blocks = len(decoder.decoders)
    size = decoder.decoders[0].size
    ys = torch.randint(0, vocab_size, (EXAMPLE_HYPS, EXAMPLE_PREFIX))
    memory = torch.randn(EXAMPLE_HYPS, EXAMPLE_FRAMES, encoder_size)
    cache = [torch.randn(EXAMPLE_HYPS, EXAMPLE_PREFIX - 1, size) for _ in range(n_blocks)]
    hyps, frames = torch.export.Dim("hyps"), torch.export.Dim("frames")
    cached = torch.export.Dim("cached", min=0, max=65536)  # L - 1: 0 at the first step
    inputs, outputs = decoder_names(n_blocks)
    with torch.no_grad():
        torch.onnx.export(
            DecoderStepForExport(decoder).eval(), (ys, memory, *cache), path, dynamo=True,
            opset_version=opset, input_names=inputs, output_names=outputs,
            dynamic_shapes=({0: hyps, 1: cached + 1}, {0: hyps, 1: frames},
                            tuple({0: hyps, 1: cached} for _ in range(n_blocks))),
            external_data=False, verbose=False,
        )
