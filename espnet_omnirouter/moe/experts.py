"""Stacked feed-forward experts with sort-based dispatch (torch only).

Every expert is a slice of one stacked Parameter, so DDP never sees an unused parameter
even when an expert receives no frames in a step.

Four implementations of the same function (``Experts.impl`` picks one; "auto" by default):

* ``grouped_mm``: one ``torch._grouped_mm`` per matmul over all experts, with the
  expert offsets as a device tensor: no host sync, nothing data-dependent in shapes, so it
  also traces under ``torch.compile`` (bfloat16 only: the compiler's shape function for
  ``_grouped_mm`` rejects other dtypes).  "auto" uses it on CUDA (bfloat16, sm90+, where
  its kernels are fast) and for bfloat16 under ``torch.compile``.
* ``loop``: one ``addmm -> activation -> addmm`` per expert slice, in a custom autograd
  function (:class:`_ExpertLoop`) that also does the gather of the expert inputs, the gate
  multiply and the scatter of the outputs, expert by expert, while the slice is in cache.
  It needs the slice sizes on the host (one ``ends.tolist()``: free on CPU, one device
  sync on CUDA).  "auto" uses it for eager CPU training and large CPU inference batches,
  where it is faster than CPU ``_grouped_mm``, and as the portable fallback for every
  other device/dtype.
* ``padded``: inference only (no autograd, eval mode for "auto").  The slices are laid
  out in an ``[E, C, d]`` buffer padded to the largest slice ``C`` and run through two
  ``baddbmm``: a constant number of operators whatever ``E``.  Where a few experts take
  far more frames than the others, the experts are split into a few runs of consecutive
  experts, each padded to its own largest slice (:func:`padded_runs`).  At decoding
  sizes (one utterance: a few hundred frames, a few dozen per expert) the per-slice loop
  is dominated by per-operator cost and by small-matrix GEMM inefficiency; batched GEMMs
  over padded slices are faster even though they compute the padding rows too.  "auto"
  uses it for eager CPU inference up to :data:`PADDED_MAX_ROWS` assignments where
  ``gemm_batch`` cannot run.
* ``gemm_batch``: inference only, CPU float32.  Each expert's slice, of its own height,
  through MKL's variable-size batched GEMM (:mod:`.gemm_batch`): two GEMM calls per FFN
  whatever ``E``, no padding rows, the small GEMMs spread over the threads; the biases
  are gathered per row into the output that the GEMM adds to.  "auto" uses it for eager
  CPU float32 inference up to :data:`PADDED_MAX_ROWS` assignments wherever
  :func:`.gemm_batch.available` (PyTorch's x86 builds, which link MKL) and ``native``
  cannot run (``benchmarks/encoder_infer.py``).
* ``native``: inference only, CPU float32 (x86-64 with AVX2).  Everything in C
  (:mod:`.native`, compiled at first use): the sort by expert, the gathers, the expert
  GEMMs (bias included, on a packed copy of the weights that they stream in order), the
  activation where the C code knows it (ReLU, SiLU, ESPnet's Swish once the encoders are
  imported; dropout inactive: one call for the FFN; else a PyTorch call between two), the
  gate and the scatter; with :class:`~.layer.MoEFeedForward` the unsorted routing goes
  straight in (no PyTorch sort), and the router is C too (:class:`~.router.Router`).
  "auto" takes it for CPU float32 inference up to :data:`NATIVE_MAX_ROWS` assignments
  wherever :func:`.native.available` (batch 1 and batch 8 decoding alike).
"""
import contextlib
import functools
import math
from typing import Callable, List, Optional, Tuple

import torch
from torch import nn
from torch.autograd.function import once_differentiable
from torch.optim.optimizer import register_optimizer_step_post_hook

from espnet_omnirouter.moe import gemm_batch, native

IMPLS = ("auto", "grouped_mm", "loop", "padded", "gemm_batch", "native")
INFERENCE_ONLY = ("padded", "gemm_batch", "native")

# Where the C kernels cannot run, "auto" takes gemm_batch (or padded where MKL's batched GEMM is
# missing) for CPU inference of at most this many (frame, expert) assignments per MoE FFN, and
# the per-slice loop above it (benchmarks/encoder_infer.py: batch 1 at 2-20 s is 50-500 frames
# after 4x subsampling; batch 8 x 10 s is 2,000, where the loop is the faster of the two).
PADDED_MAX_ROWS = 1024
# "auto" takes the native path for CPU float32 inference of at most this many assignments per
# MoE FFN, the loop above it: about where the loop overtakes it (benchmarks/ffn_infer_rows.py,
# its table in benchmarks/README.md; batch 8 x 10 s is ~2,000 assignments).
NATIVE_MAX_ROWS = 8192
# Optimizer steps taken in this process (torch.optim's global step hook): part of the key of the
# native path's packed weights, since an optimizer may update weights in place without bumping
# their version counter (fused Adam does), which would leave the packed copy stale.
_optimizer_steps = [0]


def _count_optimizer_step(optimizer, args, kwargs) -> None:
    _optimizer_steps[0] += 1


register_optimizer_step_post_hook(_count_optimizer_step)

# Fixed cost of one run of the padded path (two baddbmm and an activation call: ~100 us on
# a 2-core CPU), in FLOPs of padding rows that it is worth to skip: see padded_runs.
PADDED_RUN_COST_FLOP = 2e7


def grouped_mm_supported(x: torch.Tensor, hidden: int, dtype: Optional[torch.dtype] = None) -> bool:
    """Whether ``torch._grouped_mm`` can run the experts on ``x`` (cast to ``dtype``).

    On CPU it handles float32/bfloat16/float16 (with autograd); on CUDA we use it for
    bfloat16 on Hopper or newer, where its kernels are fast, and when the row widths meet
    its 16-byte alignment.  Everything else takes the portable per-slice path.
    """
    dtype = x.dtype if dtype is None else dtype
    if not hasattr(torch, "_grouped_mm"):
        return False
    if x.is_cuda:
        return (
            dtype == torch.bfloat16
            and torch.cuda.get_device_capability(x.device)[0] >= 9
            and x.shape[1] % 8 == 0
            and hidden % 8 == 0
        )
    return x.device.type == "cpu" and dtype in (torch.float32, torch.bfloat16, torch.float16)


_onnx_export = [False]  # set by onnx_export_mode()


@contextlib.contextmanager
def onnx_export_mode():
    """Within it, MoE and Duo slots take their traceable dispatch (``onnx_exporting()`` is True):
    ``export.encoder.export_encoder`` runs ``torch.onnx.export`` in it.  A flag of ours, read as a
    constant by the tracer: ``torch.compiler.is_exporting()`` is also True while torch.compile
    traces (PyTorch 2.11), and ``torch.onnx.is_in_onnx_export()`` is not a constant to it."""
    previous, _onnx_export[0] = _onnx_export[0], True
    try:
        yield
    finally:
        _onnx_export[0] = previous


def onnx_exporting() -> bool:
    """Whether an ONNX export is capturing the graph (within :func:`onnx_export_mode`)."""
    return _onnx_export[0]


def records_grad(module: nn.Module, *inputs: torch.Tensor) -> bool:
    """Whether autograd records a call of ``module`` on ``inputs`` (and its parameters)."""
    return torch.is_grad_enabled() and any(t.requires_grad for t in (*inputs, *module.parameters()))


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype the experts compute in: the autocast dtype where autocast is on."""
    device = x.device.type
    return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else x.dtype


class Experts(nn.Module):
    """``E`` position-wise feed-forward networks ``w2(dropout(act(w1 x + b1))) + b2``.

    Weights are stacked: ``w1 [E, d, h]``, ``b1 [E, h]``, ``w2 [E, h, d]``, ``b2 [E, d]``;
    expert ``e`` computes the same function as ESPnet's ``PositionwiseFeedForward`` whose
    ``w_1.weight`` is ``w1[e].T``.

    Args:
        num_experts: ``E``.
        d_model: input/output width ``d``.
        hidden: hidden width ``h`` of each expert.
        activation: activation module applied to the hidden units (shared by all experts).
        dropout_rate: dropout on the hidden units.
    """

    # "auto", "grouped_mm" (needs grouped_mm_supported) or "loop"; see the module docstring.
    impl = "auto"

    def __init__(
        self,
        num_experts: int,
        d_model: int,
        hidden: int,
        activation: nn.Module,
        dropout_rate: float = 0.0,
    ):
        super().__init__()
        self.num_experts = num_experts
        self.w1 = nn.Parameter(torch.empty(num_experts, d_model, hidden))
        self.b1 = nn.Parameter(torch.empty(num_experts, hidden))
        self.w2 = nn.Parameter(torch.empty(num_experts, hidden, d_model))
        self.b2 = nn.Parameter(torch.empty(num_experts, d_model))
        self.activation = activation
        self.dropout = nn.Dropout(dropout_rate)
        self._packed = None  # (key, w1, w2) for the native path, see _native_packed
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # Each expert initialised like an nn.Linear of its own shape.
        for weight, bias in ((self.w1, self.b1), (self.w2, self.b2)):
            bound = 1.0 / math.sqrt(weight.shape[1])
            nn.init.uniform_(weight, -bound, bound)
            nn.init.uniform_(bias, -bound, bound)

    def path(self, x: torch.Tensor, assignments: int, dtype: Optional[torch.dtype] = None, grad: bool = True) -> str:
        """Which implementation runs ``assignments`` rows of ``x`` computed in ``dtype``
        (default: its own): "grouped_mm", "loop", "padded", "gemm_batch" or "native" (see the module
        docstring).

        ``grad``: whether autograd records the call.  "auto" takes the inference paths only
        for inference: no autograd and eval mode (in training mode their dropout would draw
        its masks over another layout, in another order than the loop's).
        """
        dtype = x.dtype if dtype is None else dtype
        if self.impl not in IMPLS:
            raise ValueError(f"Experts.impl must be one of {IMPLS}, got {self.impl!r}")
        if self.impl in ("loop",) + INFERENCE_ONLY:
            if self.impl in INFERENCE_ONLY and grad:
                raise ValueError(f"Experts.impl {self.impl!r} is inference only, but autograd is recording")
            if self.impl == "gemm_batch" and not self._gemm_batch_runs(x, dtype):
                raise ValueError(f"Experts.impl 'gemm_batch' runs float32 on CPU with MKL, not {dtype} on {x.device}")
            if self.impl == "native" and not self._native_runs(x, dtype):
                why = native.why_not if self._cpu_float32(x, dtype) else f"float32 on CPU, not {dtype} on {x.device}"
                raise ValueError(f"Experts.impl 'native' cannot run: {why}")
            return self.impl
        supported = grouped_mm_supported(x, self.w1.shape[2], dtype)
        if self.impl == "grouped_mm" and not supported:
            raise ValueError(f"torch._grouped_mm cannot run {dtype} on {x.device}")
        if torch.compiler.is_compiling():
            # The compiler's shape function for _grouped_mm accepts bfloat16 only; other
            # dtypes run the loop eagerly (it is excluded from tracing, see _by_slices).
            return "grouped_mm" if supported and dtype == torch.bfloat16 else "loop"
        if self.impl == "grouped_mm" or (supported and x.is_cuda):
            return "grouped_mm"
        if not grad and not self.training and x.device.type == "cpu":
            if assignments <= NATIVE_MAX_ROWS and self._native_runs(x, dtype):
                return "native"
            if assignments <= PADDED_MAX_ROWS:
                return "gemm_batch" if self._gemm_batch_runs(x, dtype) else "padded"
        return "loop"

    def _cpu_float32(self, x: torch.Tensor, dtype: torch.dtype) -> bool:
        """Whether ``x`` is on CPU and computed in float32 with float32 weights (what the
        gemm_batch and native paths run)."""
        return x.device.type == "cpu" and dtype == torch.float32 and self.w1.dtype == torch.float32

    def _gemm_batch_runs(self, x: torch.Tensor, dtype: torch.dtype) -> bool:
        """Whether the gemm_batch path can run ``x`` computed in ``dtype``: float32 on CPU,
        with MKL's batched GEMM."""
        return self._cpu_float32(x, dtype) and gemm_batch.available()

    def _native_runs(self, x: torch.Tensor, dtype: torch.dtype) -> bool:
        """Whether the native path can run ``x`` computed in ``dtype``: float32 on CPU, with
        the C kernels built and checked (:func:`.native.available`)."""
        return self._cpu_float32(x, dtype) and native.available()

    def use_grouped_mm(self, x: torch.Tensor, dtype: Optional[torch.dtype] = None) -> bool:
        """Whether the ``grouped_mm`` path runs for ``x`` computed in ``dtype`` (default:
        its own)."""
        return self.path(x, x.shape[0], dtype) == "grouped_mm"

    def forward(self, x: torch.Tensor, ends: torch.Tensor, expert: torch.Tensor) -> torch.Tensor:
        """Run each expert on its contiguous slice of frames.

        Args:
            x: ``[M, d]`` frames sorted by expert (expert 0's frames first).
            ends: ``[E]`` int32/int64, end row (exclusive) of each expert's slice: the
                cumulative frame counts, ``ends[-1] == M`` (``torch._grouped_mm``'s ``offs``).
            expert: ``[M]`` int64, the expert of each row of ``x`` (non-decreasing).

        Returns:
            ``[M, d]`` expert outputs, in the order of ``x``.
        """
        x = x.to(compute_dtype(x))
        grad = records_grad(self, x)
        path = self.path(x, x.shape[0], grad=grad)
        if path == "grouped_mm":
            return self._grouped_mm(x, ends, expert)
        rows = torch.arange(x.shape[0], device=x.device)
        ones = x.new_ones(x.shape[0], dtype=torch.float32)
        return self._by_slices(path, grad, x, rows, ends, expert, ones, True)

    def dense(self, x: torch.Tensor) -> torch.Tensor:
        """Expert 0 on every row of ``x`` ``[N, d]`` (for ``E == 1``: a plain FFN, with autograd)."""
        if self.num_experts != 1:
            raise ValueError(f"Experts.dense runs a single expert; this one has {self.num_experts}")
        return self.expert_ffn(0, x)

    def expert_ffns(self) -> List[Tuple[int, Callable[[torch.Tensor], torch.Tensor]]]:
        """``(e, FFN_e)`` for every expert: ``FFN_e(x)`` runs expert ``e`` alone on the rows
        ``[n, d]`` of ``x`` (the traceable dispatch of ``MoEFeedForward`` calls them)."""
        return [(e, functools.partial(self.expert_ffn, e)) for e in range(self.num_experts)]

    def expert_ffn(self, e: int, x: torch.Tensor) -> torch.Tensor:
        """Expert ``e`` on every row of ``x`` ``[n, d]``: ``[n, d]`` in the compute dtype."""
        dtype = compute_dtype(x)
        w1, b1, w2, b2 = self.w1[e], self.b1[e], self.w2[e], self.b2[e]
        if dtype != w1.dtype or dtype != x.dtype:  # (casts only where needed: each is an operator)
            x, w1, b1, w2, b2 = (t.to(dtype) for t in (x, w1, b1, w2, b2))
        if torch.is_autocast_enabled(x.device.type):
            with torch.autocast(x.device.type, enabled=False):
                return torch.addmm(b2, self._hidden(torch.addmm(b1, x, w1)), w2)
        return torch.addmm(b2, self._hidden(torch.addmm(b1, x, w1)), w2)

    def combine(
        self,
        flat: torch.Tensor,
        rows: torch.Tensor,
        ends: torch.Tensor,
        expert: torch.Tensor,
        gate: torch.Tensor,
        unique: bool,
    ) -> torch.Tensor:
        """Dispatch, run and combine: ``out[rows[i]] += gate[i] * FFN_{expert[i]}(flat[rows[i]])``.

        Args:
            flat: ``[R, d]`` frames.
            rows: ``[M]`` int64, row of ``flat`` of each assignment, sorted by expert.
            ends: ``[E]`` int32/int64, end (exclusive) of each expert's assignments in
                ``rows``: the cumulative counts, ``ends[-1] == M``.
            expert: ``[M]`` int64, the expert of each assignment (non-decreasing).
            gate: ``[M]`` gate of each assignment.
            unique: whether ``rows`` has no repeated row (top-1): the combine is then a
                scatter without accumulation.

        Returns:
            ``[R, d]`` in the compute dtype; rows not in ``rows`` are 0.
        """
        dtype = compute_dtype(flat)
        grad = records_grad(self, flat, gate)
        path = self.path(flat, rows.shape[0], dtype, grad=grad)
        if path == "grouped_mm":
            x = _GatherUniqueRows.apply(flat, rows) if unique else flat.index_select(0, rows)
            y = self._grouped_mm(x.to(dtype), ends, expert)
            return _scatter_rows(y * gate.unsqueeze(1).to(y.dtype), rows, flat.shape[0], unique)
        return self._by_slices(path, grad, flat, rows, ends, expert, gate, unique)

    def _grouped_mm(self, x: torch.Tensor, ends: torch.Tensor, expert: torch.Tensor) -> torch.Tensor:
        # One kernel per matmul, no host sync: the offsets are the end row of each expert.
        offsets = ends.to(torch.int32)  # no-op for the int32 ends of MoEFeedForward
        # Per-row biases as a one-hot [M, E] matmul added in place to the grouped_mm output
        # (an out-of-place addmm would first copy it): its backward is the GEMM
        # onehot^T @ grad (a per-expert row sum), not an index_put/atomic scatter-add of M
        # rows into E rows.  In place is safe: _grouped_mm's backward needs its inputs only.
        onehot = (expert.unsqueeze(1) == torch.arange(self.num_experts, device=x.device)).to(x.dtype)
        hidden = torch._grouped_mm(x, self.w1.to(x.dtype), offs=offsets).addmm_(onehot, self.b1.to(x.dtype))
        hidden = self.dropout(self.activation(hidden))
        out = torch._grouped_mm(hidden, self.w2.to(x.dtype), offs=offsets)
        return out.addmm_(onehot, self.b2.to(x.dtype))

    # The slice sizes are data: keep the compiler out (it would recompile for each new set
    # of sizes); under torch.compile the grouped_mm path is used where it can run.
    @torch.compiler.disable
    def _by_slices(self, path, grad, flat, rows, ends, expert, gate, unique) -> torch.Tensor:
        """The "loop", "padded", "gemm_batch" and "native" paths; ``grad``: whether autograd
        records the call (the other arguments as :meth:`combine`'s)."""
        if path == "native":
            # Each sorted assignment as a frame of its own (top-1 over ``rows``): the kernel's
            # stable counting sort keeps the order; repeated rows accumulate.
            with torch.no_grad():
                return self.native(flat, rows, expert.unsqueeze(1), gate.unsqueeze(1))
        bounds = [0] + ends.tolist()  # the one host sync (free on CPU)
        sizes = [b - a for a, b in zip(bounds, bounds[1:])]
        dtype = compute_dtype(flat)
        params = (self.w1, self.b1, self.w2, self.b2)
        if path in INFERENCE_ONLY:
            with torch.no_grad(), torch.autocast(flat.device.type, enabled=False):
                if path == "padded":
                    return self._padded(flat, rows, expert, gate, bounds, sizes, unique, dtype)
                return self._gemm_batch(flat, rows, expert, gate, sizes, unique)
        if grad:
            return _ExpertLoop.apply(flat, gate, *params, rows, sizes, self._hidden, unique, flat.shape[0], dtype)
        with torch.no_grad():
            return _expert_loop_forward(flat, gate, *params, rows, sizes, self._hidden, unique, flat.shape[0], dtype)[0]

    def _padded(self, flat, rows, expert, gate, bounds, sizes, unique, dtype) -> torch.Tensor:
        """The padded path (no autograd): the experts are split into runs of consecutive
        experts (:func:`padded_runs`); a run of ``n`` experts whose largest slice is ``C``
        is an ``[n, C, d]`` block of one buffer and two ``baddbmm``, on views of the
        stacked weights."""
        d_in, hidden = self.w1.shape[1:]
        runs = padded_runs(sizes, max(1, round(PADDED_RUN_COST_FLOP / (4 * d_in * hidden))))
        total = sum((stop - start) * width for start, stop, width in runs)
        if total == 0:
            return _new_rows(flat.shape[0], flat.new_empty(0, self.w2.shape[2], dtype=dtype), rows, False)
        # Slot of assignment i in the buffer: the j-th row of expert e of a run that starts
        # at ``offset`` with expert ``start`` -> offset + (e - start) * C + j.
        shift, offsets, offset = [], [], 0
        for start, stop, width in runs:
            offsets.append(offset)
            shift += [offset + (e - start) * width - bounds[e] for e in range(start, stop)]
            offset += (stop - start) * width
        shift = torch.tensor(shift, device=flat.device)
        slot = torch.arange(rows.shape[0], device=flat.device).add_(shift.index_select(0, expert))
        # Row of ``flat`` read into each slot; padding slots read row 0 (never used).
        source = rows.new_zeros(total).index_copy_(0, slot, rows)
        x = flat.index_select(0, source).to(dtype)
        w1, b1, w2, b2 = (p.to(dtype) for p in (self.w1, self.b1, self.w2, self.b2))
        y = x.new_empty(total, w2.shape[2])
        for (start, stop, width), offset in zip(runs, offsets):
            if width == 0:
                continue
            block = slice(offset, offset + (stop - start) * width)
            x_run = x[block].view(stop - start, width, -1)
            h = self._hidden(torch.baddbmm(b1[start:stop].unsqueeze(1), x_run, w1[start:stop]))
            torch.baddbmm(b2[start:stop].unsqueeze(1), h, w2[start:stop], out=y[block].view(stop - start, width, -1))
        y = y.index_select(0, slot).mul_(gate.to(dtype).unsqueeze(1))
        return _put_rows(_new_rows(flat.shape[0], y, rows, unique), rows, y, unique)

    def _gemm_batch(self, flat, rows, expert, gate, sizes, unique) -> torch.Tensor:
        """The gemm_batch path (float32, no autograd): gather the rows sorted by expert, and
        per layer gather each row's expert bias into the output and add the slices' GEMMs
        to it (:func:`.gemm_batch.gemm_groups`, one call for all experts)."""
        x = flat.index_select(0, rows)
        w1, w2 = self.w1.contiguous(), self.w2.contiguous()
        hidden = self.b1.index_select(0, expert)
        gemm_batch.gemm_groups(x, w1, hidden, sizes, beta=1.0)
        hidden = self._hidden(hidden).contiguous()
        y = self.b2.index_select(0, expert)
        gemm_batch.gemm_groups(hidden, w2, y, sizes, beta=1.0)
        y.mul_(gate.to(y.dtype).unsqueeze(1))
        return _put_rows(_new_rows(flat.shape[0], y, rows, unique), rows, y, unique)

    def native(
        self, flat: torch.Tensor, index: Optional[torch.Tensor], expert: torch.Tensor, gate: torch.Tensor
    ) -> torch.Tensor:
        """The native path (float32 CPU inference, :mod:`.native`): ``out[row(t)] (+)=
        sum_j gate[t, j] * FFN_{expert[t, j]}(flat[row(t)])``.

        Args:
            flat: ``[R, d]`` frames.
            index: ``[n]`` int64, the row of ``flat`` of routed frame ``t``; None: all rows (``n == R``).
            expert: ``[n, k]`` int64 and gate ``[n, k]``: each routed frame's choices, unsorted.

        Returns:
            ``[R, d]`` float32, zero on rows not routed.
        """
        w1, w2 = self._native_packed()
        act = self.native_act()
        return native.experts(
            flat.contiguous(), None if index is None else index.contiguous(), expert.contiguous(),
            gate.float().contiguous(), w1, self.b1.contiguous(), w2, self.b2.contiguous(), self._hidden, act,
        )

    def native_act(self) -> int:
        """The ``native.ACT_*`` code of the activation the C GEMM applies itself: the activation's
        when the C code knows it and dropout is the identity, else ``ACT_NONE`` (it runs in PyTorch)."""
        if self.dropout.training and self.dropout.p > 0:
            return native.ACT_NONE
        return native.activation_code(self.activation)

    def _native_packed(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """``w1`` and ``w2`` in the native GEMM's layout (:func:`.native.pack`): a copy of the
        experts' weights, kept while the module is used for CPU inference and packed again
        whenever a weight may have changed: its storage or version changed (``load_state_dict``,
        an in-place edit, a move), an optimizer stepped (:data:`_optimizer_steps`: PyTorch's
        fused Adam, which ESPnet's trainer uses, updates weights without bumping their
        version), or a weight has a gradient (it is being trained: no copy is kept)."""
        params = (self.w1, self.w2)
        if any(w.grad is not None for w in params):
            self._packed = None
            return native.pack(self.w1), native.pack(self.w2)
        key = tuple((w.data_ptr(), w._version) for w in params) + (_optimizer_steps[0],)
        if self._packed is None or self._packed[0] != key:
            self._packed = None  # the old copy goes before the new one is made
            self._packed = (key, native.pack(self.w1), native.pack(self.w2))
        return self._packed[1], self._packed[2]

    def __getstate__(self):
        # The packed copy is a cache (rebuilt on use), not part of the module.
        return {**super().__getstate__(), "_packed": None}

    def _hidden(self, pre: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.activation(pre))

    def extra_repr(self) -> str:
        e, d, h = self.w1.shape
        return f"num_experts={e}, d_model={d}, hidden={h}"


def padded_runs(sizes: List[int], run_cost: int) -> List[Tuple[int, int, int]]:
    """Split experts ``0..E-1`` into runs of consecutive experts for the padded path.

    A run ``(start, stop, C)`` computes ``(stop - start) * C`` rows, ``C`` being its largest
    slice; each run also costs a fixed ``run_cost`` (in rows: two GEMM calls and the
    activation).  Returns the runs of least total cost (dynamic programming, ``O(E^2)``
    on the host): one run when the slices are alike, more when a few experts take many
    more frames than the rest (one padded block would compute mostly padding).

    Args:
        sizes: ``[E]`` rows of each expert.
        run_cost: fixed cost of a run, in rows.
    """
    best, cut = [0] + [math.inf] * len(sizes), [0] * (len(sizes) + 1)
    for stop in range(1, len(sizes) + 1):
        width = 0
        for start in range(stop - 1, -1, -1):
            width = max(width, sizes[start])
            cost = best[start] + (stop - start) * width + run_cost
            if cost < best[stop]:
                best[stop], cut[stop] = cost, start
    runs, stop = [], len(sizes)
    while stop > 0:
        start = cut[stop]
        runs.append((start, stop, max(sizes[start:stop])))
        stop = start
    return runs[::-1]


def _new_rows(num_rows: int, like: torch.Tensor, rows: torch.Tensor, unique: bool) -> torch.Tensor:
    """A ``[num_rows, ...]`` buffer to scatter ``rows`` into: uninitialised when the rows
    cover every row exactly once, zeros otherwise (always zeros in a graph that ONNX export
    captures, where the number of rows is a symbol known at run time only)."""
    shape = (num_rows,) + tuple(like.shape[1:])
    if unique and not onnx_exporting() and rows.shape[0] == num_rows:
        return like.new_empty(shape)
    return like.new_zeros(shape)


def _put_rows(out: torch.Tensor, rows: torch.Tensor, y: torch.Tensor, unique: bool) -> torch.Tensor:
    """``out[rows[i]] += y[i]`` in place; distinct ``rows`` (``unique``) are copied, not accumulated."""
    return out.index_copy_(0, rows, y) if unique else out.index_add_(0, rows, y)


def _scatter_rows(y: torch.Tensor, rows: torch.Tensor, num_rows: int, unique: bool) -> torch.Tensor:
    """``out[rows[i]] += y[i]`` into a new ``[num_rows, d]`` tensor (0 elsewhere), with autograd."""
    # In place on a fresh buffer: the out-of-place versions would first clone it.
    return _put_rows(_new_rows(num_rows, y, rows, unique), rows, y, unique)


def _expert_loop_forward(flat, gate, w1, b1, w2, b2, rows, sizes, hidden_fn, unique, num_rows, dtype, keep=False):
    """Forward of :class:`_ExpertLoop`; with ``keep`` also what its backward needs."""
    w1, b1, w2, b2 = (p.to(dtype) for p in (w1, b1, w2, b2))
    gate = gate.to(dtype)
    out = _new_rows(num_rows, flat.new_empty(0, w2.shape[2], dtype=dtype), rows, unique)
    saved = []
    with torch.autocast(flat.device.type, enabled=False):
        for e, (rows_e, gate_e) in enumerate(zip(rows.split(sizes), gate.split(sizes))):
            x_e = flat.index_select(0, rows_e).to(dtype)
            pre = torch.addmm(b1[e], x_e, w1[e])
            if keep:
                # A local graph for the activation (any module, dropout included); the
                # backward differentiates it with torch.autograd.grad.
                pre.requires_grad_()
                with torch.enable_grad():
                    post = hidden_fn(pre)
                y_e = torch.addmm(b2[e], post.detach(), w2[e])
                saved.append((pre, post, y_e))  # x_e is gathered again in the backward
                y_e = y_e * gate_e.unsqueeze(1)
            else:
                y_e = torch.addmm(b2[e], hidden_fn(pre), w2[e]).mul_(gate_e.unsqueeze(1))
            _put_rows(out, rows_e, y_e, unique)
    return out, (w1, w2, gate), saved


class _ExpertLoop(torch.autograd.Function):
    """Gather, ``addmm -> hidden_fn -> addmm``, gate and scatter, one expert at a time.

    ``out[rows[i]] (+)= gate[i] * FFN_{e}(flat[rows[i]])`` for the ``sizes[e]`` rows of
    each expert ``e``.  Compared with the same computation as separate autograd ops, each
    expert's rows are gathered, computed, scaled and scattered while they are in cache,
    and no sorted ``[M, d]`` copy of the inputs, outputs or their gradients is built; the
    weight gradients are written straight into the stacked ``[E, ...]`` gradients (plain
    autograd would compute E slices and stack them).  Computes in ``dtype``; gradients
    are returned in the dtype of each input.
    """

    @staticmethod
    def forward(ctx, flat, gate, w1, b1, w2, b2, rows, sizes, hidden_fn, unique, num_rows, dtype):
        ctx.dtypes = [t.dtype for t in (flat, gate, w1, b1, w2, b2)]
        out, (w1c, w2c, gate_c), saved = _expert_loop_forward(
            flat, gate, w1, b1, w2, b2, rows, sizes, hidden_fn, unique, num_rows, dtype, keep=True
        )
        ctx.save_for_backward(flat, rows, w1c, w2c, gate_c)
        ctx.saved, ctx.sizes, ctx.unique, ctx.num_rows = saved, sizes, unique, num_rows
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        if ctx.saved is None:
            raise RuntimeError("backward through the MoE experts twice (retain_graph) is not supported")
        flat, rows, w1, w2, gate = ctx.saved_tensors
        grad_out = grad_out.to(w1.dtype)
        dtypes = ctx.dtypes
        grad_flat = _new_rows(ctx.num_rows, grad_out.new_empty(0, w1.shape[1], dtype=dtypes[0]), rows, ctx.unique)
        grad_gate = gate.new_empty(gate.shape)
        grad_w1, grad_w2 = torch.empty_like(w1), torch.empty_like(w2)
        grad_b1, grad_b2 = w1.new_empty(w1.shape[0], w1.shape[2]), w2.new_empty(w2.shape[0], w2.shape[2])
        saved, ctx.saved = ctx.saved, None
        chunks = zip(rows.split(ctx.sizes), gate.split(ctx.sizes), grad_gate.split(ctx.sizes))
        for e, (rows_e, gate_e, grad_gate_e) in enumerate(chunks):
            # Take this expert's saved tensors out of the list, so that they are freed at the
            # end of the iteration, as autograd frees a node's saved tensors after its backward.
            pre, post, y_e = saved[e]
            saved[e] = None
            x_e = flat.index_select(0, rows_e).to(w1.dtype)
            g_e = grad_out.index_select(0, rows_e)
            torch.sum(g_e * y_e, 1, out=grad_gate_e)
            g_e.mul_(gate_e.unsqueeze(1))
            torch.mm(post.detach().t(), g_e, out=grad_w2[e])
            torch.sum(g_e, 0, out=grad_b2[e])
            grad_hidden = torch.mm(g_e, w2[e].t())
            if post is not pre:
                (grad_hidden,) = torch.autograd.grad(post, pre, grad_hidden)
            torch.mm(x_e.t(), grad_hidden, out=grad_w1[e])
            torch.sum(grad_hidden, 0, out=grad_b1[e])
            if not ctx.needs_input_grad[0]:
                continue
            grad_x = torch.mm(grad_hidden, w1[e].t()).to(dtypes[0])
            _put_rows(grad_flat, rows_e, grad_x, ctx.unique)
        grads = [g.to(t) for g, t in zip((grad_gate, grad_w1, grad_b1, grad_w2, grad_b2), dtypes[1:])]
        return (grad_flat if ctx.needs_input_grad[0] else None, *grads) + (None,) * 6


class _GatherUniqueRows(torch.autograd.Function):
    """``x.index_select(0, rows)`` for distinct ``rows``.

    Its backward scatters the gradient rows back without accumulation (``index_copy``)
    instead of ``index_select``'s accumulating ``index_add``, which is slower on CPU and
    uses atomics on CUDA.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(rows)
        ctx.num_rows = x.shape[0]
        return x.index_select(0, rows)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (rows,) = ctx.saved_tensors
        return _scatter_rows(grad, rows, ctx.num_rows, True), None
