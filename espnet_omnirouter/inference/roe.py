"""Roster of Experts (RoE): hyper-parallel inference for MoE encoders.

K copies of the encoder run with Gumbel noise on the router logits of the middle MoE
FFNs (expert = top-k of ``logits + tau * Gumbel``; the first and last ``clean_layers`` MoE
FFNs stay noise-free), and their CTC posteriors are averaged.  The copies run as one batch,
and the blocks below the first noisy MoE FFN run once: their output is repeated K times.

Sampling ``argmax(logits + tau * G)`` with ``G ~ Gumbel(0, 1)`` draws expert ``e`` with
probability ``softmax(logits / tau)[e]``.  Gates stay the clean softmax probabilities.
"""
import contextlib
import math
import typing
from dataclasses import dataclass, field, fields
from typing import Dict, List, Optional, Sequence, Union

import torch

from espnet_omnirouter.config_check import check_value
from espnet_omnirouter.encoders.contextual_block import is_streaming
from espnet_omnirouter.encoders.moe_encoder import MoEEncoderMixin


@dataclass
class RoEConfig:
    """RoE options (the ``roe_*`` keys of inference).

    Attributes:
        samples: K; 1 turns RoE off (normal decoding).
        tau: Gumbel temperature, one value or one per MoE FFN (execution order).
        clean_layers: how many first and how many last MoE FFNs stay noise-free.
        aggregate: ``prob`` (mean of posteriors) or ``logprob`` (mean of log-posteriors).
        shared_noise: one Gumbel draw per frame reused by every noisy MoE FFN (meant for
            shared routers) instead of independent draws per FFN.
        seed: seed of the noise generator (reset for every utterance).
    """

    samples: int = 1
    tau: Union[float, Sequence[float]] = 1.0
    clean_layers: int = 1
    aggregate: str = "prob"
    shared_noise: bool = False
    seed: int = 0

    def __post_init__(self):
        """Check every option, also when RoE is off (``samples`` 1): types as
        :mod:`espnet_omnirouter.config_check` checks them, then ranges; errors name the
        ``roe_*`` option."""
        hints = typing.get_type_hints(RoEConfig)
        for f in fields(self):
            check_value(f"roe_{f.name}", getattr(self, f.name), hints[f.name])
        if self.samples < 1:
            raise ValueError(f"roe_samples must be >= 1 (1 = RoE off), got {self.samples}")
        if self.clean_layers < 0:
            raise ValueError(f"roe_clean_layers must be >= 0, got {self.clean_layers}")
        taus = [self.tau] if isinstance(self.tau, (int, float)) else list(self.tau)
        if not taus or any(not math.isfinite(t) or t < 0 for t in taus):
            raise ValueError(f"roe_tau must be finite and >= 0 (one value or one per MoE FFN), got {self.tau}")
        if self.aggregate not in ("prob", "logprob"):
            raise ValueError(f"roe_aggregate must be 'prob' or 'logprob', got {self.aggregate!r}")

    def check(self, num_moe: int) -> None:
        """Check the options against an encoder with ``num_moe`` MoE FFNs."""
        if 2 * self.clean_layers >= num_moe:
            raise ValueError(
                f"roe_clean_layers must leave a noisy MoE FFN: 0 <= 2 * clean_layers < {num_moe}, got {self.clean_layers}"
            )
        self.taus(num_moe)

    def taus(self, num_moe: int) -> List[float]:
        """Temperature of each MoE FFN (0 for the clean ones)."""
        if isinstance(self.tau, (int, float)):
            taus = [float(self.tau)] * num_moe
        else:
            taus = [float(t) for t in self.tau]
            if len(taus) != num_moe:
                raise ValueError(f"roe_tau has {len(taus)} values for {num_moe} MoE FFNs")
        return [0.0 if i < self.clean_layers or i >= num_moe - self.clean_layers else t for i, t in enumerate(taus)]


@dataclass
class _NoiseState:
    generator: torch.Generator
    shared: Optional[torch.Tensor] = None
    flips: Dict[int, List[float]] = field(default_factory=dict)


class _GumbelSelection:
    """Selection scores ``logits + tau * G`` for one MoE FFN; records its flip rate."""

    def __init__(self, index: int, tau: float, state: _NoiseState, shared: bool):
        self.index, self.tau, self.state, self.shared = index, tau, state, shared

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        if self.shared:
            if self.state.shared is None or self.state.shared.shape != logits.shape:
                self.state.shared = gumbel_like(logits, self.state.generator)
            noise = self.state.shared
        else:
            noise = gumbel_like(logits, self.state.generator)
        scores = logits + self.tau * noise
        flipped = (scores.argmax(-1) != logits.argmax(-1)).float().mean().item() if logits.numel() else 0.0
        self.state.flips.setdefault(self.index, []).append(flipped)
        return scores


def gumbel_like(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Standard Gumbel noise of ``x``'s shape (float32, on the generator's device)."""
    u = torch.rand(x.shape, generator=generator, device=generator.device, dtype=torch.float32)
    exponential = (-torch.log(u.clamp_min(1e-20))).clamp_min(1e-20)  # Exp(1) draws
    return (-torch.log(exponential)).to(x.device)


class RoEEncoder:
    """Runs the K noisy encoder copies of an MoE encoder.

    Usage: call :meth:`capture` as a context around the normal (clean) encoder forward; it
    records the input of the first block that holds a noisy MoE FFN.  Then
    :meth:`noisy_outputs` runs the remaining blocks on K copies of that input.
    """

    def __init__(self, encoder: MoEEncoderMixin, config: RoEConfig):
        if not isinstance(encoder, MoEEncoderMixin):
            raise ValueError(f"RoE needs an MoE encoder, got {type(encoder).__name__}")
        if getattr(encoder, "interctc_use_conditioning", False) or getattr(encoder, "ctc_trim", False):
            raise ValueError("RoE does not support interctc_use_conditioning or ctc_trim encoders")
        if is_streaming(encoder):
            raise ValueError(
                f"RoE does not support contextual-block (streaming) encoders ({type(encoder).__name__}): "
                "it reruns the blocks on K copies of a whole utterance; decode with roe_samples: 1"
            )
        self.encoder = encoder
        self.config = config
        ffns = encoder.moe_ffns()
        config.check(len(ffns))
        self.taus = config.taus(len(ffns))
        self.noisy = [i for i, t in enumerate(self.taus) if t > 0]
        # First block (index into encoder.encoders) that contains a noisy MoE FFN.
        blocks = [int(name.split(".")[1]) for name in encoder.moe_names]
        self.start_block = blocks[self.noisy[0]] if self.noisy else len(encoder.encoders)
        self._captured = None
        self.flip_rates: Dict[int, float] = {}

    @contextlib.contextmanager
    def capture(self):
        """Record the input ``(x, mask)`` of block ``start_block`` during a clean forward
        (without noisy layers, the encoder output: every copy equals it)."""
        if self.noisy:
            handle = self.encoder.encoders[self.start_block].register_forward_pre_hook(
                lambda module, args: setattr(self, "_captured", (args[0], args[1]))
            )
        else:
            handle = self.encoder.register_forward_hook(
                lambda module, args, output: setattr(self, "_captured", output[0])
            )
        try:
            yield
        finally:
            handle.remove()

    @torch.no_grad()
    def noisy_outputs(self) -> torch.Tensor:
        """``[K, B, T, d]`` encoder outputs of the K noisy copies of the captured batch."""
        if self._captured is None:
            raise RuntimeError("RoEEncoder.noisy_outputs() needs a clean forward inside capture() first")
        captured, self._captured = self._captured, None
        k = self.config.samples
        if not self.noisy:
            return captured.unsqueeze(0).expand(k, *captured.shape)
        x, mask = captured
        if isinstance(x, tuple):  # (x, relative positional embedding): the embedding is shared
            x = (x[0].repeat(k, 1, 1), x[1])
        else:
            x = x.repeat(k, 1, 1)
        mask = mask.repeat(k, 1, 1)
        device = (x[0] if isinstance(x, tuple) else x).device
        state = _NoiseState(torch.Generator(device=device).manual_seed(self.config.seed))
        with self._noise(state):
            for block in self.encoder.encoders[self.start_block :]:
                x, mask = block(x, mask)
        if isinstance(x, tuple):
            x = x[0]
        if getattr(self.encoder, "normalize_before", True):  # E-Branchformer: always
            x = self.encoder.after_norm(x)
        self.flip_rates = {i: sum(v) / len(v) for i, v in state.flips.items()}
        return x.view(k, -1, *x.shape[1:])

    @contextlib.contextmanager
    def _noise(self, state: _NoiseState):
        """Give each noisy MoE FFN's router its Gumbel selection while that FFN runs (a
        shared router serves several FFNs, so the noise is set per call)."""
        handles = []
        for i in self.noisy:
            ffn = self.encoder.moe_ffns()[i]
            selection = _GumbelSelection(i, self.taus[i], state, self.config.shared_noise)

            def pre(module, args, selection=selection):
                module.router.selection_noise = selection

            def post(module, args, output):
                module.router.selection_noise = None

            handles += [ffn.register_forward_pre_hook(pre), ffn.register_forward_hook(post)]
        try:
            yield
        finally:
            for h in handles:
                h.remove()
            for ffn in self.encoder.moe_ffns():
                ffn.router.selection_noise = None


def average_log_posteriors(log_probs: torch.Tensor, aggregate: str) -> torch.Tensor:
    """Combine ``[K, ..., V]`` log-posteriors over K: ``prob`` -> log of the mean posterior,
    ``logprob`` -> mean log-posterior renormalised to a distribution."""
    k = log_probs.shape[0]
    if aggregate == "prob":
        return torch.logsumexp(log_probs, dim=0) - torch.log(torch.tensor(float(k)))
    mean = log_probs.mean(dim=0)
    return mean - torch.logsumexp(mean, dim=-1, keepdim=True)


def ctc_greedy(log_probs: torch.Tensor, blank: int = 0) -> List[int]:
    """Best-path CTC decoding of ``[T, V]`` log-posteriors: argmax, merge repeats, drop blanks."""
    best = log_probs.argmax(-1).tolist()
    out, prev = [], None
    for token in best:
        if token != prev and token != blank:
            out.append(token)
        prev = token
    return out
