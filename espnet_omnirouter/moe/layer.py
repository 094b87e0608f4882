"""Top-k Mixture-of-Experts feed-forward layer (torch only).

The layer does not necessarily own its router: a Switch layer owns one, while the
Omni-router layers of an encoder share one router module that the encoder owns.  That is
the only difference between the two; the dispatch code is the same.
"""
import math
from dataclasses import dataclass
from typing import Optional, Union

import torch
from torch import nn

from espnet_omnirouter.moe import native
from espnet_omnirouter.moe.experts import NATIVE_MAX_ROWS, Experts, compute_dtype, onnx_exporting, records_grad
from espnet_omnirouter.moe.router import Router, Routing


@dataclass
class Padding:
    """Which frames of a ``[B, T]`` batch are real, and their rows in the flattened batch.

    Several MoE layers that see the same padding can share one (an encoder builds it once
    per forward): finding the rows is a ``nonzero``, which on CUDA waits for the device.

    Attributes:
        valid: ``[B, T]`` bool, True = real frame.
        rows: ``[N]`` int64, rows of the ``B * T`` flattened frames that are real, in
            row-major order; None when every frame is real.
        record_rows: ``[M]`` int64, the routed frames (indices into the ``N`` real ones)
            whose routing is recorded for losses and statistics; None: all ``N``.  Block
            processing routes a frame in every block it is in and records it once.
        record_valid: with ``record_rows``: the ``[B', T']`` bool frame mask that the ``M``
            recorded rows follow in row-major order (what :class:`LayerRouting` keeps).
    """

    valid: torch.Tensor
    rows: Optional[torch.Tensor]
    record_rows: Optional[torch.Tensor] = None
    record_valid: Optional[torch.Tensor] = None

    @classmethod
    def from_mask(cls, valid: torch.Tensor) -> "Padding":
        rows = valid.reshape(-1).nonzero().squeeze(1)
        if onnx_exporting():  # an exported graph serves padded batches too: always gather
            return cls(valid, rows)
        return cls(valid, None if rows.shape[0] == valid.numel() else rows)

    @classmethod
    def with_record(cls, valid: torch.Tensor, recorded: torch.Tensor, record_valid: torch.Tensor) -> "Padding":
        """``valid`` frames routed, the subset ``recorded`` (same shape) recorded; the recorded
        frames, in row-major order, are the True entries of ``record_valid``."""
        padding = cls.from_mask(valid)
        chosen = recorded.reshape(-1)[valid.reshape(-1)]
        padding.record_rows = chosen.nonzero().squeeze(1)
        padding.record_valid = record_valid
        return padding


@dataclass
class LayerRouting:
    """What one MoE layer did in its last forward, for losses, statistics and analysis.

    Attributes:
        routing: the routing of the ``N`` non-padded frames (tensors keep their graph).
        valid: ``[B, T]`` bool mask of the frames that were routed (True = real frame),
            or None when the input had no padding mask; ``routing`` rows follow the
            row-major order of the True entries.
        dropped: scalar int64, number of (frame, choice) assignments over capacity.
    """

    routing: Routing
    valid: Optional[torch.Tensor]
    dropped: torch.Tensor


class MoEFeedForward(nn.Module):
    """Replace a position-wise FFN by ``E`` experts and a top-k router.

    ``y = sum_j gate_j * FFN_{expert_j}(x)`` for each non-padded frame; padded frames
    and frames dropped by the capacity limit get 0 (so a residual connection passes them).

    Args:
        router: the router; registered as a submodule only when ``own_router`` is True.
        experts: the experts.
        capacity_factor: None for dropless routing (default); otherwise each expert takes
            at most ``ceil(capacity_factor * N * k / E)`` assignments per forward at
            training time, first choices of all frames before second choices, earlier
            frames first.  Evaluation is always dropless so that decoding does not depend
            on the batch.
        own_router: True for a layer-private router (Switch); False when the router is
            owned, and saved, by a parent module (Omni-router).
    """

    def __init__(
        self,
        router: Router,
        experts: Experts,
        capacity_factor: Optional[float] = None,
        own_router: bool = True,
    ):
        super().__init__()
        if capacity_factor is not None and capacity_factor <= 0:
            raise ValueError(f"capacity_factor must be > 0 or null, got {capacity_factor}")
        if router.num_experts != experts.num_experts:
            raise ValueError(
                f"router has {router.num_experts} experts but Experts has {experts.num_experts}"
            )
        if own_router:
            self.router = router
        else:
            # A plain attribute: not a submodule, so it is neither saved nor moved twice.
            self.__dict__["router"] = router
        self.experts = experts
        self.capacity_factor = capacity_factor
        # Padding for the next forward, set by an encoder whose layers call
        # feed_forward(x) without a mask: [B, T] bool (True = real frame) or a Padding.
        self.pad_mask: Optional[Union[torch.Tensor, Padding]] = None
        self.last: Optional[LayerRouting] = None

    def __getstate__(self):
        # ``last`` holds the last forward's graph (non-leaf tensors, which cannot be deep-copied)
        # and ``pad_mask`` the next forward's input: per-step values, not part of the module.
        # Without this, copy.deepcopy / pickling of a model fails after any training forward.
        state = super().__getstate__()
        return {**state, "last": None, "pad_mask": None}

    def capacity(self, num_frames: int) -> Optional[int]:
        """Assignments each expert may take for ``num_frames`` frames (None: unlimited)."""
        if self.capacity_factor is None or not self.training:
            return None
        k, e = self.router.top_k, self.router.num_experts
        return math.ceil(self.capacity_factor * num_frames * k / e)

    def forward(
        self, x: torch.Tensor, mask: Optional[Union[torch.Tensor, Padding]] = None
    ) -> torch.Tensor:
        """Args:
            x: ``[B, T, d]`` (or any ``[..., d]``).
            mask: ``[B, T]`` bool, True = real frame, or a :class:`Padding` built from
                one; defaults to ``self.pad_mask``, then to all frames.

        Returns:
            ``[B, T, d]``, zero on padded and dropped frames.
        """
        if mask is None:
            mask = self.pad_mask
        flat = x.reshape(-1, x.shape[-1])
        valid, index = None, None  # index: rows of ``flat`` that are routed (None: all)
        if mask is not None:
            valid = mask.valid if isinstance(mask, Padding) else mask
            # Exported, ESPnet's mask is as long as the longest length, a graph symbol of its own
            # (ESPnet's encoders need the frames to be as long, so the check is the tracer's only).
            if not onnx_exporting() and valid.shape != x.shape[:-1]:
                raise ValueError(
                    f"MoE padding mask has shape {tuple(valid.shape)}, expected {tuple(x.shape[:-1])}"
                )
            padding = mask if isinstance(mask, Padding) else Padding.from_mask(valid)
            index = padding.rows  # None without padding: no gather, no scatter
        routing, out, dropped = self._run(flat, index, x.shape[:-1])
        if isinstance(mask, Padding) and mask.record_rows is not None:
            routing, valid = routing.select(mask.record_rows), mask.record_valid
        self.last = LayerRouting(routing=routing, valid=valid, dropped=dropped)
        return out.view(x.shape)

    def _run(self, flat: torch.Tensor, index: Optional[torch.Tensor], shape: torch.Size):
        """Route the rows ``index`` of ``flat`` ``[R, d]`` (None: all rows; the flattened
        ``shape`` frames) and run the experts: ``(routing, out [R, d], dropped)``.

        For float32 CPU inference with an activation that the C GEMM applies, the router and
        the experts are one C call (:func:`.native.moe_slot`, the same computation as the
        router's and ``Experts``' native paths one after the other)."""
        experts = self.experts
        if (
            type(self).route is MoEFeedForward.route  # the router's routing, not a subclass's (Duo)
            and isinstance(experts, Experts)
            and experts.impl in ("auto", "native")
            and experts.w1.dtype == torch.float32
            and self._native_inference(flat, index, self.router.top_k)
        ):
            act = experts.native_act()
            if act != native.ACT_NONE:
                w1, w2 = experts._native_packed()
                out, logits, probs, expert, gate = native.moe_slot(
                    flat.contiguous(), None if index is None else index.contiguous(), self.router.weight.contiguous(),
                    self.router.top_k, w1, experts.b1.contiguous(), w2, experts.b2.contiguous(), act,
                )
                return Routing(expert, gate, probs, logits), out, expert.new_zeros(())
        frames = flat if index is None else flat.index_select(0, index)
        routing = self.route(frames, index, shape)
        out, dropped = self._dispatch(flat, index, routing)
        return routing, out, dropped

    def _native_inference(self, flat: torch.Tensor, index: Optional[torch.Tensor], per_frame: int) -> bool:
        """Whether this forward may take a one-call C path (:mod:`.native`): float32 CPU inference
        in eval mode, no autograd recording, no tracing (torch.compile, ONNX export), the router's
        float32 weight without selection noise, at most ``NATIVE_MAX_ROWS`` assignments
        (``per_frame`` per routed frame), the kernels built.  At batch 1 this runs once per FFN
        and forward: a few microseconds."""
        router = self.router
        return not (
            self.training
            or onnx_exporting()  # before any test of a shape: traced, sizes are symbols
            or torch.compiler.is_compiling()
            or flat.device.type != "cpu"
            or flat.dtype != torch.float32
            or (flat.shape[0] if index is None else index.shape[0]) * per_frame > NATIVE_MAX_ROWS
            or router.selection_noise is not None
            or router.weight.dtype != torch.float32
            or (torch.is_grad_enabled() and (records_grad(self, flat) or router.weight.requires_grad))
            or compute_dtype(flat) != torch.float32
            or not native.available()
        )

    def route(self, frames: torch.Tensor, index: Optional[torch.Tensor], shape: torch.Size) -> Routing:
        """The routing of the ``[N, d]`` routed ``frames`` (rows ``index`` of the flattened
        ``shape`` frames; None: all rows): the router's.  Duo slots override it."""
        return self.router(frames)

    def _dispatch(self, flat: torch.Tensor, index: Optional[torch.Tensor], routing: Routing):
        """Sort the (frame, choice) assignments by expert and run the experts.

        Args:
            flat: ``[R, d]`` all frames, padded ones included.
            index: ``[N]`` rows of ``flat`` that ``routing`` routes (None: all ``R`` rows).
            routing: the routing of those ``N`` frames.

        Returns the ``[R, d]`` combined output (zero on rows not routed and on dropped
        assignments) and the number of dropped assignments.

        The expert inputs are gathered straight from ``flat`` and the outputs scattered
        straight back into a tensor of its shape (padding removal included, see
        ``Experts.combine``); nothing of size ``[N, E, capacity]`` is ever built.
        """
        if onnx_exporting():
            return _dispatch_traceable(self.experts, flat, index, routing)
        num_experts = self.router.num_experts
        num_frames, top_k = routing.expert.shape
        if isinstance(self.experts, Experts) and self.capacity(num_frames) is None:
            grad = records_grad(self.experts, flat, routing.gate)
            if self.experts.path(flat, num_frames * top_k, compute_dtype(flat), grad=grad) == "native":
                # The C kernels sort, gather, run and scatter the unsorted routing themselves.
                out = self.experts.native(flat, index, routing.expert, routing.gate)
                return out, routing.expert.new_zeros(())
        if top_k == 1:
            # Each frame is at most once in the sorted order: no repeat/arange, and the
            # combine is a scatter without accumulation.
            expert, gate, token = routing.expert[:, 0], routing.gate[:, 0], None
        else:
            # k-major flattening: all first choices, then all second choices, ...
            expert = routing.expert.t().reshape(-1)
            gate = routing.gate.t().reshape(-1)
            token = torch.arange(num_frames, device=flat.device).repeat(top_k)
        sorted_expert, order = torch.sort(expert, stable=True)
        # End row of each expert's slice, without a host sync (bincount on CUDA would sync
        # on its max); int32, the offsets that torch._grouped_mm takes.
        ends = torch.searchsorted(
            sorted_expert, torch.arange(num_experts, device=flat.device), right=True, out_int32=True
        )
        dropped = expert.new_zeros(())
        capacity = self.capacity(num_frames)
        if capacity is not None:
            counts = torch.diff(ends, prepend=ends.new_zeros(1))
            position = torch.arange(order.shape[0], device=order.device) - (ends - counts)[sorted_expert]
            keep = position < capacity
            order, sorted_expert = order[keep], sorted_expert[keep]
            kept = counts.clamp(max=capacity)
            dropped = (counts - kept).sum()
            ends = kept.cumsum(0, dtype=torch.int32)
        sorted_gate = gate.index_select(0, order)
        rows = order if token is None else token.index_select(0, order)  # frame of each row
        if index is not None:
            rows = index.index_select(0, rows)  # ... as a row of ``flat``
        out = self.experts.combine(flat, rows, ends, sorted_expert, sorted_gate, unique=token is None)
        return out, dropped


def _dispatch_traceable(experts, flat: torch.Tensor, index: Optional[torch.Tensor], routing: Routing):
    """``MoEFeedForward._dispatch`` for ONNX export (``torch.export`` capture): sparse and traceable.

    Each expert's assignments are found by a comparison and a ``nonzero`` (sizes become symbols
    of the graph, nothing is read back to Python), its rows gathered and run through that expert's
    FFN alone (``experts.expert_ffns()``: a Duo skip path has none, so its rows cost nothing);
    the experts' outputs are concatenated, scaled by their gates and added into the output at
    once (one gate gather, one multiply, one scatter per FFN and choice: every exported node has a
    fixed cost in onnxruntime).  Same arguments and results as ``_dispatch``; inference only (no
    capacity: evaluation is dropless).
    """
    out = flat.new_zeros(flat.shape[0], flat.shape[1], dtype=compute_dtype(flat))
    ffns = experts.expert_ffns()
    for k in range(routing.expert.shape[1]):
        expert, gate = routing.expert[:, k], routing.gate[:, k]
        chosen, rows, ys = [], [], []
        for e, ffn in ffns:
            c = torch.nonzero(expert == e, as_tuple=True)[0]
            r = c if index is None else index.index_select(0, c)
            chosen.append(c)
            rows.append(r)
            ys.append(ffn(flat.index_select(0, r)))
        chosen = torch.cat(chosen)
        y = torch.cat(ys) * gate.index_select(0, chosen).to(out.dtype).unsqueeze(1)
        out = out.index_add(0, torch.cat(rows), y)
    return out, routing.expert.new_zeros(())
