"""Duo encoders: ESPnet Conformer/Transformer/E-Branchformer whose FFN slots choose big, small or skip per frame.

Each selected ``PositionwiseFeedForward`` becomes a :class:`~espnet_omnirouter.moe.duo.DuoFeedForward`
with three paths: big (the encoder's own FFN, ``linear_units``), small (``duo_small_units``)
and skip.  Routers are per slot (``duo_router: slot``, Switch-like) or one router shared by
all slots (``duo_router: shared``, Omni-like), the same switch as Switch vs Omni-router.
"""
import inspect
from typing import List, Optional

import torch
from espnet.nets.pytorch_backend.transformer.positionwise_feed_forward import PositionwiseFeedForward

from espnet_omnirouter.config_check import check_known_keys, typechecked_conf
from espnet_omnirouter.encoders.moe_encoder import FFNSlotsMixin, espnet_base, macaron_key
from espnet_omnirouter.moe import PATHS, DuoFeedForward, DuoPolicy, LayerRouting, PathExperts, Router
from espnet_omnirouter.signature import publish_signature

ROUTER_OWNERS = ("slot", "shared")
TRAIN_ROUTINGS = ("random", "learned")
# Duo-LLM's small module: hidden width 1/16 of the big FFN's.
SMALL_FRACTION = 16


def check_probs(key: str, probs: List[float]) -> None:
    """Path probabilities ``[big, small, skip]``: three numbers >= 0 summing to 1 (error names ``key``)."""
    if len(probs) != len(PATHS) or any(p < 0 for p in probs) or abs(sum(probs) - 1.0) > 1e-6:
        raise ValueError(
            f"{key} must be {len(PATHS)} probabilities >= 0 of the paths {list(PATHS)} that sum to 1, got {probs}"
        )


class DuoEncoderMixin(FFNSlotsMixin):
    """Mixin placed before an ESPnet encoder class; see the module docstring.

    Duo keys (every other key goes to the ESPnet encoder):
        duo_small_units: hidden width of the small path (None: ``linear_units // 16``, Duo-LLM's).
        duo_layers: 0-based block indices whose FFNs become Duo slots (None = every block).
        duo_macaron: Conformer/E-Branchformer only: also the macaron FFNs (None: where the
            blocks have one).
        duo_router: "slot" (one router per slot) or "shared" (one router for all slots).
        duo_routing: how training routes: "random" (stage 1: each frame's path drawn from
            ``duo_train_probs``; the routers are frozen) or "learned" (stage 2: the routers,
            straight-through; see :mod:`espnet_omnirouter.moe.duo`).
        duo_train_probs: ``[big, small, skip]`` probabilities of random routing (None: uniform).
        router_jitter: multiplicative router-input jitter at training time (0 = off).
    """

    @typechecked_conf("encoder_conf")
    def __init__(
        self,
        input_size: int,
        duo_small_units: Optional[int] = None,
        duo_layers: Optional[List[int]] = None,
        duo_macaron: Optional[bool] = None,
        duo_router: str = "slot",
        duo_routing: str = "random",
        duo_train_probs: Optional[List[float]] = None,
        router_jitter: float = 0.0,
        **encoder_kwargs,
    ):
        published = inspect.signature(type(self)).parameters
        if duo_macaron is not None and "duo_macaron" not in published:
            raise ValueError(
                f"encoder_conf.duo_macaron is for encoders with a macaron FFN (duo_conformer, duo_e_branchformer): "
                f"a {type(self).__name__} block has none"
            )
        check_known_keys("encoder_conf", type(self), encoder_kwargs)
        if duo_router not in ROUTER_OWNERS:
            raise ValueError(f"encoder_conf.duo_router must be one of {list(ROUTER_OWNERS)}, got {duo_router!r}")
        if duo_routing not in TRAIN_ROUTINGS:
            raise ValueError(f"encoder_conf.duo_routing must be one of {list(TRAIN_ROUTINGS)}, got {duo_routing!r}")
        probs = [1.0 / len(PATHS)] * len(PATHS) if duo_train_probs is None else list(duo_train_probs)
        check_probs("encoder_conf.duo_train_probs", probs)
        if duo_train_probs is not None and duo_routing != "random":
            raise ValueError("encoder_conf.duo_train_probs is for duo_routing: random (remove it for learned routing)")
        if not 0.0 <= router_jitter < 1.0:
            raise ValueError(f"encoder_conf.router_jitter must be in [0, 1), got {router_jitter}")
        self.check_family_conf(encoder_kwargs)
        super().__init__(input_size, **encoder_kwargs)

        names = self._ffn_names(duo_layers, duo_macaron, "duo_layers", "duo_macaron")
        d_model = self.output_size()
        big = self.get_submodule(names[0]).w_1.out_features
        small = big // SMALL_FRACTION if duo_small_units is None else duo_small_units
        if not 1 <= small < big:
            raise ValueError(
                f"encoder_conf.duo_small_units must be in [1, linear_units={big}), got {small}"
                + (" (linear_units // 16 is 0: set duo_small_units)" if duo_small_units is None else "")
            )
        shared = duo_router == "shared"
        routers = [Router(d_model, len(PATHS), 1, router_jitter) for _ in range(1 if shared else len(names))]
        if shared:
            self.routers = torch.nn.ModuleList(routers)
        if duo_routing == "random":
            # Stage 1 never calls the routers: frozen, so DDP does not wait for their gradients.
            for router in routers:
                router.requires_grad_(False)

        def make(j: int, ffn: PositionwiseFeedForward) -> DuoFeedForward:
            paths = PathExperts(d_model, [ffn.w_1.out_features, small, 0], ffn.activation, ffn.dropout.p)
            return DuoFeedForward(routers[0 if shared else j], paths, not shared)

        self._replace_ffns(names, make)
        self.duo_routing = duo_routing
        self.duo_train_probs = tuple(probs)
        self.set_duo_policies([self.training_policy()] * len(names))

    def training_policy(self) -> DuoPolicy:
        """The policy of ``duo_routing`` (what the slots do unless a decoding policy is set)."""
        if self.duo_routing == "random":
            return DuoPolicy("random", probs=self.duo_train_probs)
        return DuoPolicy("learned")

    @property
    def duo_names(self) -> List[str]:
        """Qualified names of the Duo slots, in execution order."""
        return self.slot_names

    def duo_slots(self) -> List[DuoFeedForward]:
        """The Duo slots in execution order."""
        return self._slots()

    def duo_records(self) -> List[Optional[LayerRouting]]:
        """Each slot's routing in the last forward (None: the slot did not run)."""
        return [m.last for m in self.duo_slots()]

    def duo_costs(self) -> torch.Tensor:
        """``[3]`` relative FFN compute per frame of big, small and skip (1, h_s / h, 0)."""
        return self.duo_slots()[0].costs

    def duo_router_parameters(self) -> List[torch.nn.Parameter]:
        """The routers' parameters (one router, or one per slot)."""
        routers = {id(m.router): m.router for m in self.duo_slots()}
        return [p for r in routers.values() for p in r.parameters()]

    def set_duo_policies(self, policies: List[DuoPolicy]) -> None:
        """One policy per slot, in execution order."""
        slots = self.duo_slots()
        if len(policies) != len(slots):
            raise ValueError(f"{len(policies)} Duo policies for {len(slots)} slots")
        for slot, policy in zip(slots, policies):
            slot.policy = policy


def duo_signature(cls):
    """Class decorator: publish ``input_size``, the Duo keys, then the ESPnet encoder's keys."""
    base = espnet_base(cls)
    mixin = inspect.signature(DuoEncoderMixin.__init__).parameters
    skip = {"self", "input_size", "encoder_kwargs"}
    if macaron_key(base) is None:
        skip.add("duo_macaron")
    own = [p for n, p in mixin.items() if n not in skip]
    publish_signature(cls, base, own, leading=[mixin["input_size"]])
    return cls
