"""``Speech2Text`` with RoE: CTC scoring uses the posteriors averaged over K routings."""
import contextlib
import logging
from typing import Dict, List, Optional

import torch
from espnet2.bin import asr_inference
from espnet2.bin.asr_inference import Speech2Text

from espnet_omnirouter.encoders.duo_encoder import DuoEncoderMixin
from espnet_omnirouter.inference.duo import DuoDecodeConfig, apply_duo_policy
from espnet_omnirouter.inference.roe import RoEConfig, RoEEncoder, average_log_posteriors, ctc_greedy
from espnet_omnirouter.moe import duo_stats


class _AveragedCTC:
    """Stands in for the model's CTC inside ESPnet's CTC prefix scorer: ``log_softmax``
    returns the RoE-averaged log-posteriors of the utterance being decoded."""

    def __init__(self, ctc: torch.nn.Module):
        self.ctc = ctc
        self.log_probs: Optional[torch.Tensor] = None  # [1, T, V]

    def log_softmax(self, x: torch.Tensor) -> torch.Tensor:
        if self.log_probs is None or self.log_probs.shape[:-1] != x.shape[:-1]:
            raise RuntimeError("RoE posteriors are missing or do not match the encoder output")
        return self.log_probs.to(x.dtype)

    def __getattr__(self, name):
        return getattr(self.ctc, name)


class RoESpeech2Text(Speech2Text):
    """ESPnet's ``Speech2Text`` plus the ``roe_*`` options of :class:`RoEConfig` and the
    ``duo_*`` options of :class:`~espnet_omnirouter.inference.duo.DuoDecodeConfig`.

    With a Duo encoder the decoding policy is set once; after each utterance
    ``duo_compute`` holds the relative FFN compute of its encoder forward (1.0 = all big),
    also logged.

    With ``roe_samples`` K > 1, every encoder forward is followed by K noisy copies of the
    encoder above the first noisy MoE FFN; the CTC prefix scorer of joint CTC/attention
    decoding then reads the averaged posteriors, while the attention decoder attends to
    the clean encoder output.  K = 1 is exactly ESPnet's decoding.
    """

    def __init__(
        self,
        *args,
        roe_samples: int = 1,
        roe_tau=1.0,
        roe_clean_layers: int = 1,
        roe_aggregate: str = "prob",
        roe_shared_noise: bool = False,
        roe_seed: int = 0,
        duo_policy: Optional[str] = None,
        duo_pattern: Optional[str] = None,
        duo_probs: Optional[List[float]] = None,
        duo_cost_bias: float = 0.0,
        duo_seed: int = 0,
        **kwargs,
    ):
        duo = DuoDecodeConfig(duo_policy, duo_pattern, duo_probs, duo_cost_bias, duo_seed)
        super().__init__(*args, **kwargs)
        self.duo_compute: Optional[float] = None
        encoder = self.asr_model.encoder
        if isinstance(encoder, DuoEncoderMixin):
            apply_duo_policy(encoder, duo)
            encoder.register_forward_hook(self._record_duo_compute)
        elif duo != DuoDecodeConfig():
            raise ValueError(f"duo_* options are for duo_* encoders; the model's encoder is {type(encoder).__name__}")
        self.roe_config = RoEConfig(roe_samples, roe_tau, roe_clean_layers, roe_aggregate, roe_shared_noise, roe_seed)
        self.roe: Optional[RoEEncoder] = None
        self._averaged_ctc: Optional[_AveragedCTC] = None
        if roe_samples > 1:
            self.roe = RoEEncoder(self.asr_model.encoder, self.roe_config)
            self._averaged_ctc = _AveragedCTC(self.asr_model.ctc)
            scorer = self.beam_search.scorers.get("ctc") if self.beam_search is not None else None
            if scorer is None:
                raise ValueError("RoE averages CTC posteriors: decode with ctc_weight > 0")
            scorer.ctc = self._averaged_ctc

    def _record_duo_compute(self, encoder, args, output):
        self.duo_compute = float(duo_stats(encoder.duo_records(), encoder.duo_costs())["duo_compute"])
        logging.info("Duo compute (relative to all-big): %.4f", self.duo_compute)

    def _after_encoder(self, module, args, output):
        noisy = self.roe.noisy_outputs()  # [K, B, T, d]
        k, b = noisy.shape[:2]
        log_probs = self.asr_model.ctc.log_softmax(noisy.flatten(0, 1))
        self._averaged_ctc.log_probs = average_log_posteriors(
            log_probs.view(k, b, *log_probs.shape[1:]), self.roe_config.aggregate
        )
        logging.info("RoE expert flip rate per MoE FFN: %s", {i: round(r, 4) for i, r in self.roe.flip_rates.items()})

    @property
    def flip_rates(self) -> Dict[int, float]:
        """Per noisy MoE FFN, the fraction of frames whose expert the noise changed (last utterance)."""
        return {} if self.roe is None else dict(self.roe.flip_rates)

    @contextlib.contextmanager
    def _capture(self):
        """While active, each clean encoder forward is followed by the K noisy copies."""
        if self.roe is None:
            yield
            return
        with self.roe.capture():
            handle = self.asr_model.encoder.register_forward_hook(self._after_encoder)
            try:
                yield
            finally:
                handle.remove()

    @torch.no_grad()
    def __call__(self, speech, *args, **kwargs):
        with self._capture():
            return super().__call__(speech, *args, **kwargs)

    @torch.no_grad()
    def ctc_log_posteriors(self, speech) -> torch.Tensor:
        """``[T, V]`` CTC log-posteriors of one utterance (RoE-averaged when K > 1)."""
        speech = torch.as_tensor(speech, dtype=torch.float32).unsqueeze(0).to(self.device)
        lengths = torch.tensor([speech.shape[1]], device=self.device)
        with self._capture():
            enc, _ = self.asr_model.encode(speech, lengths)
        if self.roe is not None:
            return self._averaged_ctc.log_probs[0]
        return self.asr_model.ctc.log_softmax(enc)[0]

    def greedy(self, speech) -> str:
        """Best-path CTC transcript of one utterance (RoE-averaged posteriors when K > 1)."""
        ids = ctc_greedy(self.ctc_log_posteriors(speech), blank=self.asr_model.blank_id)
        tokens = self.converter.ids2tokens(ids)
        return self.tokenizer.tokens2text(tokens) if self.tokenizer is not None else "".join(tokens)


def roe_speech2text_class(**roe) -> type:
    """A ``RoESpeech2Text`` subclass whose ``roe_*`` defaults are ``roe`` (for ESPnet's
    ``inference()``, which builds the class with ESPnet's keyword arguments only)."""

    class ConfiguredRoESpeech2Text(RoESpeech2Text):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **{**roe, **kwargs})

    return ConfiguredRoESpeech2Text


@contextlib.contextmanager
def espnet_speech2text_class(cls: type):
    """Make ``espnet2.bin.asr_inference.inference()`` build ``cls`` (its module-level name
    ``Speech2Text`` is looked up at call time, by ``from_pretrained`` too)."""
    original = asr_inference.Speech2Text
    asr_inference.Speech2Text = cls
    try:
        yield
    finally:
        asr_inference.Speech2Text = original
