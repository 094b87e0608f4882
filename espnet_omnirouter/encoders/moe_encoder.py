"""Turn an ESPnet encoder's feed-forward modules into MoE FFNs.

Families: Conformer, Transformer, E-Branchformer and the contextual-block (streaming)
Conformer/Transformer; their blocks keep the FFNs in ``feed_forward`` and
``feed_forward_macaron``.

The base encoder is built exactly as ESPnet builds it; afterwards each selected
``PositionwiseFeedForward`` is replaced by a :class:`MoEFeedForward` whose experts keep its
width, activation and dropout.  Switch encoders give every MoE FFN its own router; Omni-router
encoders own ``router_groups`` routers (1 by default) that consecutive MoE FFNs share, or, with
``router_per_ffn_position``, one router per FFN position of the Conformer block (macaron, second).
"""
import inspect
from typing import List, Optional

import torch
from espnet.nets.pytorch_backend.conformer.swish import Swish
from espnet.nets.pytorch_backend.transformer.positionwise_feed_forward import (
    PositionwiseFeedForward,
)

from espnet_omnirouter.config_check import check_known_keys, typechecked_conf
from espnet_omnirouter.moe import Experts, LayerRouting, MoEFeedForward, Padding, Router, native
from espnet_omnirouter.signature import publish_signature

# ESPnet's Conformer activation ("swish") is x * sigmoid(x): the C GEMM of the native CPU path
# applies it itself.
native.register_activation(Swish, "silu")

# FFN attributes of ESPnet's EncoderLayer, in the order the layer runs them.
_MACARON_FFN = "feed_forward_macaron"
_FFN = "feed_forward"
# The ESPnet key that gives a family's blocks their macaron FFN (Conformer, E-Branchformer).
_MACARON_KEYS = ("macaron_style", "macaron_ffn")


def macaron_key(base: type) -> Optional[str]:
    """The key of ESPnet encoder class ``base`` that adds the macaron FFN (None: it has none)."""
    params = inspect.signature(base.__init__).parameters
    return next((k for k in _MACARON_KEYS if k in params), None)


def espnet_base(cls: type) -> type:
    """The ESPnet encoder class that our encoder class ``cls`` extends."""
    return next(c for c in cls.__mro__[1:] if not issubclass(c, FFNSlotsMixin))


class PaddingHook:
    """Forward pre-hook of the encoder blocks: hand the block's padding to its MoE FFNs.

    ESPnet's EncoderLayer is called as ``layer(x, mask)`` with mask ``[B, 1, T]`` (or
    ``[B, T, T]``), True = attend; a frame is real when any query may attend to it.  All
    blocks of one forward get the same mask tensor, so the :class:`Padding` (a ``nonzero``,
    a host sync on CUDA) is built once per forward, not once per MoE FFN; a different
    mask tensor gets its own.  One instance is shared by the blocks of an encoder, which
    calls :meth:`clear` after each forward (nothing of a forward is kept).
    """

    def __init__(self):
        self.clear()

    def clear(self) -> None:
        self.mask, self.padding = None, None

    def __call__(self, block: torch.nn.Module, args) -> None:
        padding = self.padding_for(args)
        for module in block.children():
            if isinstance(module, MoEFeedForward):
                module.pad_mask = padding

    def padding_for(self, args) -> Optional[Padding]:
        """The padding of a block called with ``args`` (None: every frame is real)."""
        mask = args[1]
        if mask is None:
            return None
        if mask is not self.mask:
            self.mask, self.padding = mask, Padding.from_mask(mask.any(dim=1))
        return self.padding


def _clear_pad_mask(block: torch.nn.Module, args, output) -> None:
    for module in block.children():
        if isinstance(module, MoEFeedForward):
            module.pad_mask = None


class FFNSlotsMixin:
    """What the MoE and Duo encoder mixins share: find the FFNs of the blocks, replace them,
    hand the padding to the replacements, and reset their records before each forward.

    A subclass sets ``self.slot_names`` (via :meth:`_replace_ffns`).  A family whose blocks
    are called differently overrides :meth:`_make_padding_hook`, and one that refuses some
    of ESPnet's or our keys overrides :meth:`check_family_conf`."""

    slot_names: List[str]

    @classmethod
    def check_family_conf(cls, conf: dict) -> None:
        """Raise ``ValueError`` naming the key when ``conf`` (the ``encoder_conf`` keys given,
        ours and ESPnet's) cannot work for this family; called before anything is built."""

    def _make_padding_hook(self) -> "PaddingHook":
        return PaddingHook()

    def _ffn_names(self, layers: Optional[List[int]], macaron: Optional[bool], layers_key: str, macaron_name: str):
        """Qualified names of the FFNs of blocks ``layers`` (None: all), in execution order;
        ``macaron``: False = second FFN only, None/True = the macaron FFN too where there is one."""
        blocks = list(self.encoders)
        if layers is None:
            layers = list(range(len(blocks)))
        bad = [i for i in layers if not 0 <= i < len(blocks)]
        if bad or len(set(layers)) != len(layers):
            raise ValueError(
                f"encoder_conf.{layers_key} must be distinct block indices in [0, {len(blocks) - 1}], got {layers}"
            )
        if macaron and getattr(blocks[0], _MACARON_FFN, None) is None:
            raise ValueError(
                f"encoder_conf.{macaron_name}: true needs {macaron_key(espnet_base(type(self)))}: true (without it the "
                "blocks have no macaron FFN to convert)"
            )
        names = []
        for i in sorted(layers):
            attrs = [_FFN] if macaron is False else [_MACARON_FFN, _FFN]
            names += [f"encoders.{i}.{a}" for a in attrs if getattr(blocks[i], a, None) is not None]
        if not names:
            raise ValueError(f"encoder_conf.{layers_key} selects no feed-forward module to convert")
        return names

    def _replace_ffns(self, names: List[str], make) -> None:
        """Replace each FFN ``names[j]`` by ``make(j, ffn)`` (a :class:`MoEFeedForward`) and
        install the padding hooks."""
        for j, name in enumerate(names):
            parent, attr = name.rsplit(".", 1)
            block = self.get_submodule(parent)
            ffn = getattr(block, attr)
            if not isinstance(ffn, PositionwiseFeedForward):
                raise ValueError(
                    f"encoder_conf.positionwise_layer_type must be 'linear' for {type(self).__name__}; "
                    f"{name} is {type(ffn).__name__}"
                )
            setattr(block, attr, make(j, ffn))
        blocks = list(self.encoders)
        self._padding_hook = self._make_padding_hook()
        for i in sorted(set(int(n.split(".")[1]) for n in names)):
            blocks[i].register_forward_pre_hook(self._padding_hook)
            blocks[i].register_forward_hook(_clear_pad_mask)
        self.slot_names = names

    def _slots(self) -> List[MoEFeedForward]:
        return [self.get_submodule(n) for n in self.slot_names]

    def forward(self, xs_pad: torch.Tensor, ilens: torch.Tensor, *args, **kwargs):
        """ESPnet's encoder forward; the slots' routing records are reset first."""
        for m in self._slots():
            m.last = None
        try:
            return super().forward(xs_pad, ilens, *args, **kwargs)
        finally:
            self._padding_hook.clear()


class MoEEncoderMixin(FFNSlotsMixin):
    """Mixin placed before an ESPnet encoder class; see the module docstring.

    MoE keys (every other key goes to the ESPnet encoder):
        num_experts: experts per MoE FFN (>= 1).
        moe_layers: 0-based block indices whose FFNs become MoE (None = every block).
        top_k: experts per frame (1 = Switch routing).
        router_jitter: multiplicative router-input jitter at training time (0 = off).
        capacity_factor: None = dropless (default); else expert capacity at training time.
        moe_macaron: families with a macaron FFN (Conformer, E-Branchformer) only: also
            convert it (None, the default: when the blocks have one, i.e. with
            ``macaron_style: true`` / ``macaron_ffn: true``).
        router_groups: Omni-router only: number of routers shared by consecutive groups of
            MoE FFNs (1 = one router for all, the paper's Omni-router).
        router_per_ffn_position: Omni-router Conformer/E-Branchformer only: one shared router per FFN
            position instead: one for all macaron FFNs, one for all second FFNs.

    Every key is type-checked (:mod:`espnet_omnirouter.config_check`: the error names
    ``encoder_conf.<key>``), and a key that neither we nor the ESPnet encoder take is
    rejected with the closest valid key before ESPnet's constructor runs.
    """

    shared_router = False  # Switch: each MoE FFN owns its router

    @typechecked_conf("encoder_conf")
    def __init__(
        self,
        input_size: int,
        num_experts: int = 8,
        moe_layers: Optional[List[int]] = None,
        top_k: int = 1,
        router_jitter: float = 0.0,
        capacity_factor: Optional[float] = None,
        moe_macaron: Optional[bool] = None,
        router_groups: Optional[int] = None,
        router_per_ffn_position: Optional[bool] = None,
        **encoder_kwargs,
    ):
        published = inspect.signature(type(self)).parameters
        if router_per_ffn_position is not None and "router_per_ffn_position" not in published:
            raise ValueError(
                "encoder_conf.router_per_ffn_position is for omni_router_conformer and omni_router_e_branchformer "
                "(blocks with two FFNs); "
                f"{type(self).__name__} does not take it"
            )
        if router_per_ffn_position and router_groups not in (None, 1):
            raise ValueError(
                "encoder_conf.router_per_ffn_position: true gives one router per FFN position; "
                f"it cannot be combined with router_groups: {router_groups} (set router_groups: 1)"
            )
        if router_groups is not None and "router_groups" not in published:
            raise ValueError(
                "encoder_conf.router_groups is for omni_router_* encoders; switch_* encoders have one router per MoE FFN"
            )
        if moe_macaron is not None and "moe_macaron" not in published:
            raise ValueError(
                "encoder_conf.moe_macaron is for encoders with a macaron FFN (*_conformer, *_e_branchformer): "
                f"a {type(self).__name__} block has no macaron FFN (remove the key)"
            )
        check_known_keys("encoder_conf", type(self), encoder_kwargs)
        if num_experts < 1:
            raise ValueError(f"encoder_conf.num_experts must be >= 1, got {num_experts}")
        if not 1 <= top_k <= num_experts:
            raise ValueError(f"encoder_conf.top_k must be in [1, num_experts={num_experts}], got {top_k}")
        if capacity_factor is not None and capacity_factor <= 0:
            raise ValueError(f"encoder_conf.capacity_factor must be > 0 or null, got {capacity_factor}")
        if not 0.0 <= router_jitter < 1.0:
            raise ValueError(f"encoder_conf.router_jitter must be in [0, 1), got {router_jitter}")
        self.check_family_conf(dict(encoder_kwargs, capacity_factor=capacity_factor))
        super().__init__(input_size, **encoder_kwargs)

        names = self._ffn_names(moe_layers, moe_macaron, "moe_layers", "moe_macaron")

        if router_per_ffn_position:
            positions = sorted({n.rsplit(".", 1)[1] for n in names}, key=[_MACARON_FFN, _FFN].index)
            router_of = [positions.index(n.rsplit(".", 1)[1]) for n in names]
            groups = len(positions)
        elif self.shared_router:
            groups = 1 if router_groups is None else router_groups
            if groups < 1 or len(names) % groups:
                raise ValueError(
                    f"encoder_conf.router_groups must divide the {len(names)} MoE FFNs, got {router_groups}"
                )
            router_of = [j // (len(names) // groups) for j in range(len(names))]
        else:
            groups = len(names)
            router_of = list(range(groups))

        d_model = self.output_size()
        routers = [Router(d_model, num_experts, top_k, router_jitter) for _ in range(groups)]
        if self.shared_router:
            self.routers = torch.nn.ModuleList(routers)

        def make(j: int, ffn: PositionwiseFeedForward) -> MoEFeedForward:
            experts = Experts(num_experts, d_model, ffn.w_1.out_features, ffn.activation, ffn.dropout.p)
            return MoEFeedForward(routers[router_of[j]], experts, capacity_factor, own_router=not self.shared_router)

        self._replace_ffns(names, make)

    @property
    def moe_names(self) -> List[str]:
        """Qualified names of the MoE FFNs, in execution order."""
        return self.slot_names

    def moe_ffns(self) -> List[MoEFeedForward]:
        """The MoE FFNs in execution order."""
        return self._slots()

    def moe_records(self) -> List[Optional[LayerRouting]]:
        """Each MoE FFN's routing in the last forward (None: the layer was skipped)."""
        return [m.last for m in self.moe_ffns()]


def moe_signature(cls):
    """Class decorator: publish ``input_size``, the MoE keys, then every keyword of the
    ESPnet base encoder, so that ``--print_config`` lists them all."""
    base = espnet_base(cls)
    mixin = inspect.signature(MoEEncoderMixin.__init__).parameters
    skip = {"self", "input_size", "encoder_kwargs"}
    if not cls.shared_router:
        skip |= {"router_groups", "router_per_ffn_position"}
    if macaron_key(base) is None:
        skip |= {"moe_macaron", "router_per_ffn_position"}
    defaults = {"router_groups": 1, "router_per_ffn_position": False}
    own = [
        p.replace(default=defaults[p.name]) if p.name in defaults else p
        for n, p in mixin.items()
        if n not in skip
    ]
    publish_signature(cls, base, own, leading=[mixin["input_size"]])
    return cls
