"""Export an ESPnet ASR model's feature extraction (``frontend`` + ``normalize``) to ONNX.

The graph computes what ``ESPnetASRModel._extract_feats`` and ``normalize`` compute at decoding:
STFT (``torch.stft``, ESPnet's arguments), power spectrum, ESPnet's own ``LogMel`` and
normalisation modules.  Only ESPnet's ``Stft`` masking is replaced: it calls ``make_pad_mask`` on a
4-D tensor, which turns the lengths into a Python list (not traceable); here the padded frames
are zeroed by a comparison with the lengths, the same values.

* inputs ``speech`` ``[B, S]`` float32 (one channel, samples at the model's ``fs``) and
  ``speech_lengths`` ``[B]`` int64, ``S == max(speech_lengths)``; the frontend's multi-channel
  enhancement (``frontend_conf.frontend_conf``: WPE, beamformer) acts on several channels only, so
  it is not in the graph;
* outputs ``feats`` ``[B, T, n_mels]`` (normalised; frames past a row's length are 0) and
  ``feats_length`` ``[B]`` int64, the encoder's inputs (``export.encoder``).
"""
from typing import Optional

import torch
from torch import nn

INPUT_NAMES = ["speech", "speech_lengths"]
OUTPUT_NAMES = ["feats", "feats_length"]
# Normalisations whose ``forward(x, ilens)`` only masks 3-D tensors (traceable in ESPnet).
NORMALIZERS = ("UtteranceMVN", "GlobalMVN")
# Example rows the graph is captured with: 1.0 s and 0.8 s at 16 kHz.
EXAMPLE_SAMPLES = (16000, 12800)


def unsupported_frontend(frontend: Optional[nn.Module], normalize: Optional[nn.Module]) -> Optional[str]:
    """Why this feature extraction cannot be exported (None: it can), naming the YAML key."""
    if frontend is None:
        return "frontend: none (the model takes features, not speech): export needs `frontend: default`"
    if type(frontend).__name__ != "DefaultFrontend":
        return f"frontend: {type(frontend).__name__} is not exportable (supported: default)"
    if frontend.stft is None or not frontend.apply_stft:
        return "frontend_conf: apply_stft false is not exportable (the graph starts from samples)"
    if normalize is not None and type(normalize).__name__ not in NORMALIZERS:
        return f"normalize: {type(normalize).__name__} is not exportable (supported: utterance_mvn, global_mvn)"
    return None


class FrontendForExport(nn.Module):
    """``(speech, speech_lengths)`` -> ``(feats, feats_length)`` with ESPnet's frontend's weights."""

    def __init__(self, frontend: nn.Module, normalize: Optional[nn.Module]):
        super().__init__()
        stft = frontend.stft
        self.n_fft, self.hop_length, self.win_length = stft.n_fft, stft.hop_length, stft.win_length
        self.center, self.normalized, self.onesided = stft.center, stft.normalized, stft.onesided
        window = None if stft.window is None else getattr(torch, f"{stft.window}_window")(stft.win_length)
        self.register_buffer("window", window, persistent=False)
        self.logmel = frontend.logmel
        self.normalize = normalize

    def forward(self, speech: torch.Tensor, speech_lengths: torch.Tensor):
        spec = torch.stft(
            speech, n_fft=self.n_fft, hop_length=self.hop_length, win_length=self.win_length,
            window=self.window, center=self.center, normalized=self.normalized, onesided=self.onesided,
            return_complex=True,
        )
        spec = torch.view_as_real(spec).transpose(1, 2)  # [B, T, freq, 2]
        lengths = speech_lengths + 2 * (self.n_fft // 2) if self.center else speech_lengths
        feats_length = torch.div(lengths - self.n_fft, self.hop_length, rounding_mode="trunc") + 1
        pad = torch.arange(spec.shape[1], device=spec.device)[None, :] >= feats_length[:, None]
        power = spec.pow(2).sum(-1).masked_fill(pad[:, :, None], 0.0)  # [B, T, freq]
        feats, _ = self.logmel(power, feats_length)
        if self.normalize is not None:
            feats, _ = self.normalize(feats, feats_length)
        return feats, feats_length


def export_frontend(frontend: nn.Module, normalize: Optional[nn.Module], path: str, opset: int) -> None:
    """Write the feature extraction to the ONNX file ``path`` (dynamic batch and samples).

    Raises:
        ValueError: for a frontend or normalisation that cannot be exported, naming its key.
    """
    why = unsupported_frontend(frontend, normalize)
    if why is not None:
        raise ValueError(why)
    module = FrontendForExport(frontend, normalize).eval()
    lengths = torch.tensor(EXAMPLE_SAMPLES)
    speech = torch.randn(len(EXAMPLE_SAMPLES), int(lengths.max()))
    batch, samples = torch.export.Dim("batch"), torch.export.Dim("samples", min=module.n_fft)
    with torch.no_grad():
        torch.onnx.export(
            module, (speech, lengths), path, dynamo=True, opset_version=opset,
            input_names=INPUT_NAMES, output_names=OUTPUT_NAMES,
            dynamic_shapes=({0: batch, 1: samples}, {0: batch}), external_data=False, verbose=False,
        )
