"""Switch and Omni-router contextual-block (streaming) encoders: ESPnet's
``ContextualBlockConformerEncoder`` / ``ContextualBlockTransformerEncoder`` + MoE FFNs.

Block processing (ESPnet's streaming ASR): the subsampled frames are cut into blocks of
``block_size`` frames every ``hop_size`` frames, and all blocks run as one batch
``[B * nblock, block_size + 2, d]``: position 0 holds the context vector handed on from the
previous block, positions ``1..block_size`` the block's frames, position ``block_size + 1``
the block's own context vector.  Each output frame is copied from one block (the emitting
block): the first block up to its look-ahead, then the ``hop_size`` frames after the past
context of each block, the last block to the end.  A frame is therefore computed in several
blocks: as past context, emitted, or as look-ahead.

How the MoE FFNs see that:

* Routed: every position the dense encoder computes from real input, in every block it is
  in (context slots included), since later layers of the block attend to its output.
  Positions past an utterance's end (the padding of a batch, the empty tail of the last
  block) are not routed and get 0, as padded frames elsewhere.  So with one expert the
  encoder is ESPnet's wherever no block holds such positions; ESPnet's block mask does not
  hide them, so elsewhere the real frames of those blocks see 0 where the dense encoder
  computes an FFN output (training and streaming decoding treat them alike).  The choice of a position depends on that position only: nothing is carried
  across blocks or streaming calls beyond what ESPnet's encoder carries.
* Recorded (losses, statistics, routing analysis): each frame once, at its emitting block,
  as a ``[B, T]`` frame sequence; context slots, past context and look-ahead copies are not.

Streaming decoding (``forward_infer``, batch 1, ``Speech2TextStreaming``) routes the same way;
each call records the frames that call emits.  ``capacity_factor`` is refused: a capacity
over the positions of a block batch would count duplicated frames.
"""
from typing import Optional

import torch
from espnet2.asr.encoder.contextual_block_conformer_encoder import ContextualBlockConformerEncoder
from espnet2.asr.encoder.contextual_block_transformer_encoder import ContextualBlockTransformerEncoder

from espnet_omnirouter.config_check import check_value
from espnet_omnirouter.encoders.moe_encoder import FFNSlotsMixin, MoEEncoderMixin, PaddingHook, moe_signature
from espnet_omnirouter.moe import Padding

# What ESPnet's streaming decoder (espnet2.bin.asr_inference_streaming) reads from encoder_conf.
STREAMING_KEYS = ("block_size", "hop_size", "look_ahead")


def is_streaming(encoder: torch.nn.Module) -> bool:
    """True for a contextual-block (streaming) encoder, ours or ESPnet's dense one."""
    return isinstance(encoder, (ContextualBlockConformerEncoder, ContextualBlockTransformerEncoder))


def block_padding(lengths: torch.Tensor, nblock: int, block_size: int, hop_size: int, look_ahead: int) -> Padding:
    """Routed and recorded positions of a training-path block batch.

    Args:
        lengths: ``[B]`` subsampled frames of each utterance.
        nblock: blocks per utterance (the batch's).
        block_size, hop_size, look_ahead: the encoder's block geometry.

    Returns:
        A :class:`Padding` over ``[B * nblock, block_size + 2]`` whose recorded frames are
        ``[B, max(lengths)]`` (frame ``t < lengths[b]`` at its emitting block).
    """
    device = lengths.device
    size = block_size + 2
    pos = torch.arange(size, device=device)
    start = torch.arange(nblock, device=device) * hop_size
    frame = start[:, None] + pos - 1  # [nblock, size]: frame index at each frame position
    is_frame = (pos >= 1) & (pos <= block_size)
    real = is_frame & (frame < lengths[:, None, None])  # [B, nblock, size]
    has_frame = start < lengths[:, None]  # [B, nblock]: the block holds a real frame
    valid = real | (~is_frame & has_frame[..., None])
    # Emitting block of frame t: 0 before the first look-ahead, then one per hop, capped.
    t = torch.arange(int(lengths.max()), device=device)
    emitter = (torch.div(t - (block_size - look_ahead), hop_size, rounding_mode="floor") + 1).clamp(0, nblock - 1)
    frames = t < lengths[:, None]  # [B, T]
    recorded = torch.zeros_like(valid)
    recorded[:, emitter, t - emitter * hop_size + 1] = frames
    return Padding.with_record(valid.reshape(-1, size), recorded.reshape(-1, size), frames)


def streaming_padding(x: torch.Tensor, first: bool, final: bool, block_size: int, hop_size: int, look_ahead: int):
    """Routed and recorded positions of one streaming call's block batch ``x`` ``[1, nblock, block_size + 2, d]``.

    ESPnet leaves the positions it does not fill at 0 (the tail of the final call's last
    block): those are not routed.  Recorded are the positions the call copies to its output:
    ``hop_size`` per block after the past context, the first block's start in the first
    call (``first``), the rest of the last block in the final call (``final``).
    """
    valid = x.ne(0).any(-1)
    nblock = valid.shape[1]
    offset = block_size - look_ahead - hop_size  # past-context frames of a block
    pos = torch.arange(block_size + 2, device=x.device)
    recorded = ((pos > offset) & (pos <= offset + hop_size)).expand_as(valid).clone()
    if nblock and first:
        recorded[:, 0, 1 : offset + 1] = True
    if nblock and final:
        recorded[:, -1, offset + 1 : block_size + 1] = True
    recorded &= valid
    frames = torch.ones(1, int(recorded.sum()), dtype=torch.bool, device=x.device)
    return Padding.with_record(valid.reshape(-1, block_size + 2), recorded.reshape(-1, block_size + 2), frames)


class BlockPaddingHook(PaddingHook):
    """The padding of a contextual-block encoder's forward, built once when its block stack
    (``encoder.encoders``) is called and handed to every block's MoE FFNs.

    The encoder's ``forward_train`` sets :attr:`lengths` (its ``ilens``; replaced by the
    subsampled lengths when the input layer returns a mask), ``forward_infer`` :attr:`final`
    (``is_final``).
    """

    def __init__(self, block_size: int, hop_size: int, look_ahead: int):
        self.geometry = (block_size, hop_size, look_ahead)
        super().__init__()

    def clear(self) -> None:
        super().clear()
        self.lengths: Optional[torch.Tensor] = None
        self.final = True

    def subsampled(self, embed: torch.nn.Module, args, output) -> None:
        """Forward hook of the input layer: keep the subsampled lengths of its mask."""
        if isinstance(output, tuple) and len(output) > 1 and output[1] is not None:
            self.lengths = output[1].reshape(output[1].shape[0], -1).sum(-1)

    def begin(self, blocks: torch.nn.Module, args) -> None:
        """Forward pre-hook of the block stack, called as ``(x, mask, infer_mode, past_ctx, ...)``."""
        x, mask = args[0], args[1]
        infer = len(args) > 2 and bool(args[2])
        if x.dim() == 3:  # one block: the whole (short) utterance, mask [B, 1, T]
            self.padding = None if mask is None else Padding.from_mask(mask.any(dim=1))
        elif mask is None:  # one block in streaming: [1, 1, T, d], every frame real
            self.padding = None
        elif infer:
            first = len(args) < 4 or args[3] is None
            self.padding = streaming_padding(x, first, self.final, *self.geometry)
        else:
            self.padding = block_padding(self.lengths.to(x.device), x.shape[1], *self.geometry)

    def padding_for(self, args) -> Optional[Padding]:
        return self.padding


class _ContextualBlockFFNs(FFNSlotsMixin):
    """The contextual-block family: streaming keys checked, the block padding installed."""

    @classmethod
    def check_family_conf(cls, conf: dict) -> None:
        if conf.get("capacity_factor") is not None:
            raise ValueError(
                f"encoder_conf.capacity_factor must be null for {cls.__name__}: block processing routes a frame "
                "in each block it is in, so a capacity over a block batch would count duplicates"
            )
        for key in STREAMING_KEYS:
            if key in conf:
                check_value(f"encoder_conf.{key}", conf[key], int)
        if "block_size" not in conf:
            raise ValueError(
                f"encoder_conf.block_size must be set for {cls.__name__} (with hop_size and look_ahead): "
                "ESPnet's streaming decoder reads them from the training config (0 = no block processing)"
            )
        block = conf["block_size"]
        if block < 0:
            raise ValueError(f"encoder_conf.block_size must be >= 0 (0 = no block processing), got {block}")
        missing = [k for k in STREAMING_KEYS[1:] if k not in conf]
        if block and missing:
            raise ValueError(
                f"encoder_conf.{missing[0]} must be set for {cls.__name__} with block_size: {block} "
                "(ESPnet's streaming decoder reads block_size, hop_size and look_ahead from the training config)"
            )
        if block:
            hop, ahead = conf["hop_size"], conf["look_ahead"]
            if not (hop >= 1 and ahead >= 0 and hop + ahead <= block):
                raise ValueError(
                    "encoder_conf.hop_size and look_ahead must satisfy hop_size >= 1, look_ahead >= 0 and "
                    f"hop_size + look_ahead <= block_size, got hop_size {hop}, look_ahead {ahead}, block_size {block}"
                )

    def _make_padding_hook(self) -> BlockPaddingHook:
        hook = BlockPaddingHook(self.block_size, self.hop_size, self.look_ahead)
        self.encoders.register_forward_pre_hook(hook.begin)
        if self.embed is not None:  # None: input_layer null in the Transformer (no subsampling)
            self.embed.register_forward_hook(hook.subsampled)
        return hook

    def forward_train(self, xs_pad, ilens, prev_states=None):
        """ESPnet's block processing of whole utterances (training, validation, decoding)."""
        self._padding_hook.lengths = ilens
        return super().forward_train(xs_pad, ilens, prev_states)

    def forward_infer(self, xs_pad, ilens, prev_states=None, is_final=True):
        """ESPnet's streaming call (batch 1), see the module docstring."""
        self._padding_hook.final = is_final
        return super().forward_infer(xs_pad, ilens, prev_states, is_final)


@moe_signature
class SwitchContextualBlockConformerEncoder(_ContextualBlockFFNs, MoEEncoderMixin, ContextualBlockConformerEncoder):
    """Streaming Conformer whose FFNs are MoE FFNs, one router each (``switch_contextual_block_conformer``)."""


@moe_signature
class OmniRouterContextualBlockConformerEncoder(
    _ContextualBlockFFNs, MoEEncoderMixin, ContextualBlockConformerEncoder
):
    """Streaming Conformer whose MoE FFNs share one router (``omni_router_contextual_block_conformer``)."""

    shared_router = True


@moe_signature
class SwitchContextualBlockTransformerEncoder(
    _ContextualBlockFFNs, MoEEncoderMixin, ContextualBlockTransformerEncoder
):
    """Streaming Transformer whose FFNs are MoE FFNs, one router each (``switch_contextual_block_transformer``)."""


@moe_signature
class OmniRouterContextualBlockTransformerEncoder(
    _ContextualBlockFFNs, MoEEncoderMixin, ContextualBlockTransformerEncoder
):
    """Streaming Transformer whose MoE FFNs share one router (``omni_router_contextual_block_transformer``)."""

    shared_router = True
