"""Streaming decoding of contextual-block models with ESPnet's ``asr_inference_streaming``.

:func:`check_streaming_config` says, before a model loads, why a training config cannot be
decoded in streaming mode (ESPnet's ``Speech2TextStreaming`` only asserts it).
:class:`TimedSpeech2TextStreaming` adds the per-utterance log lines that ESPnet's
non-streaming decoder writes (``speech length`` ... ``best hypo``), so that the recipe's
RTF script times streaming decoding the same way.
"""
import logging

import yaml
from espnet2.bin.asr_inference_streaming import Speech2TextStreaming

from espnet_omnirouter.encoders.contextual_block import STREAMING_KEYS
from espnet_omnirouter.registry import ENCODERS

# ESPnet's streaming encoders and ours.
STREAMING_ENCODERS = (
    "contextual_block_conformer",
    "contextual_block_transformer",
    *(name for name in ENCODERS if "contextual_block" in name),
)


def check_streaming_config(path: str) -> None:
    """Raise ``ValueError`` naming the file and key unless the training config ``path`` is a
    streaming model: a contextual-block encoder with ``block_size``, ``hop_size`` and
    ``look_ahead`` in its ``encoder_conf`` (what ``Speech2TextStreaming`` reads)."""
    with open(path, encoding="utf-8") as f:
        config = yaml.safe_load(f) or {}
    encoder = config.get("encoder")
    if encoder not in STREAMING_ENCODERS:
        raise ValueError(
            f"{path}: encoder: {encoder} is not a streaming encoder (streaming decoding needs one of "
            f"{', '.join(STREAMING_ENCODERS)}); decode this model without --use_streaming (asr_inference)"
        )
    conf = config.get("encoder_conf") or {}
    missing = [k for k in STREAMING_KEYS if k not in conf]
    if missing:
        raise ValueError(
            f"{path}: encoder_conf.{missing[0]} is missing: streaming decoding reads "
            f"{', '.join(STREAMING_KEYS)} from the training config"
        )
    if not conf["block_size"]:
        raise ValueError(f"{path}: encoder_conf.block_size is 0 (no block processing): nothing to stream")


class TimedSpeech2TextStreaming(Speech2TextStreaming):
    """``Speech2TextStreaming`` that logs ``speech length`` at an utterance's first chunk and
    ``best hypo`` after its final one."""

    def __call__(self, speech, is_final: bool = True):
        if not getattr(self, "_utterance_started", False):
            logging.info(f"speech length: {len(speech)} samples (first chunk)")
            self._utterance_started = True
        try:
            results = super().__call__(speech, is_final=is_final)
        finally:
            if is_final:  # also when the call raised: the next call starts an utterance
                self._utterance_started = False
        if is_final:
            logging.info(f"best hypo: {results[0][0] if results else ''}")
        return results
