"""Decoding policies of Duo encoders: which path each slot takes, at what compute.

A policy is set on a Duo encoder before decoding (``duo_*`` options of our ``asr_inference``,
or keys of its decode YAML):

* ``big`` / ``small``: every slot takes that path for every frame;
* ``static``: one path per slot for every frame, ``duo_pattern`` = one letter per slot in
  execution order, ``B`` (big), ``S`` (small) or ``K`` (skip), e.g. ``BSKBSKBSKBSK``;
* ``random``: each frame's path drawn per slot from ``duo_probs`` ``[big, small, skip]``
  (``duo_seed``);
* ``learned``: the slots' routers, with ``duo_cost_bias`` subtracted from the logits per unit of
  relative cost (0: the router as trained; > 0 spends less compute);
* null (the default): ``learned`` for a model trained with ``duo_routing: learned``, ``big``
  for a stage-1 (random-routing) model, whose routers never trained.
"""
from dataclasses import dataclass
from typing import List, Optional

import torch

from espnet_omnirouter.encoders.duo_encoder import DuoEncoderMixin, check_probs
from espnet_omnirouter.moe import PATHS, DuoPolicy

POLICIES = ("big", "small", "static", "random", "learned")
PATTERN_LETTERS = {"B": 0, "S": 1, "K": 2}


@dataclass
class DuoDecodeConfig:
    """The ``duo_*`` decoding options (checked on construction; errors name the option)."""

    policy: Optional[str] = None
    pattern: Optional[str] = None
    probs: Optional[List[float]] = None
    cost_bias: float = 0.0
    seed: int = 0

    def __post_init__(self):
        if self.policy is not None and self.policy not in POLICIES:
            raise ValueError(f"duo_policy must be one of {list(POLICIES)} or null, got {self.policy!r}")
        for key, needed_by in (("pattern", "static"), ("probs", "random")):
            given = getattr(self, key) is not None
            if given != (self.policy == needed_by):
                raise ValueError(
                    f"duo_{key} is for duo_policy: {needed_by} (and needed by it); got duo_policy: {self.policy}"
                )
        if self.cost_bias and self.policy not in (None, "learned"):
            raise ValueError(f"duo_cost_bias is for duo_policy: learned; got duo_policy: {self.policy}")
        if self.pattern is not None:
            bad = sorted(set(self.pattern) - set(PATTERN_LETTERS))
            if bad or not self.pattern:
                raise ValueError(f"duo_pattern must be letters B (big), S (small), K (skip), got {self.pattern!r}")
        if self.probs is not None:
            check_probs("duo_probs", list(self.probs))

    def tag(self) -> str:
        """A short name for decode directories and tables: ``big``, ``static_BSK...``,
        ``random_0.5-0.25-0.25``, ``learned``, ``learned_bias0.3``."""
        if self.policy == "static":
            return f"static_{self.pattern}"
        if self.policy == "random":
            return "random_" + "-".join(f"{p:g}" for p in self.probs)
        if self.policy == "learned" and self.cost_bias:
            return f"learned_bias{self.cost_bias:g}"
        return self.policy or "default"


def slot_policies(encoder: DuoEncoderMixin, config: DuoDecodeConfig) -> List[DuoPolicy]:
    """One :class:`DuoPolicy` per slot of ``encoder`` for ``config``."""
    num_slots = len(encoder.duo_names)
    policy = config.policy
    if policy is None:
        policy = "learned" if encoder.duo_routing == "learned" else "big"
    if policy in ("big", "small"):
        return [DuoPolicy("fixed", path=PATHS.index(policy))] * num_slots
    if policy == "static":
        if len(config.pattern) != num_slots:
            raise ValueError(
                f"duo_pattern has {len(config.pattern)} letters, the model has {num_slots} Duo slots "
                f"({', '.join(encoder.duo_names)})"
            )
        return [DuoPolicy("fixed", path=PATTERN_LETTERS[c]) for c in config.pattern]
    if policy == "random":
        generator = torch.Generator().manual_seed(config.seed)
        return [DuoPolicy("random", probs=tuple(config.probs), generator=generator)] * num_slots
    return [DuoPolicy("learned", cost_bias=config.cost_bias)] * num_slots


def apply_duo_policy(encoder: DuoEncoderMixin, config: DuoDecodeConfig) -> None:
    """Set ``config``'s policy on every slot of ``encoder``."""
    encoder.set_duo_policies(slot_policies(encoder, config))

