"""C kernels for the MoE FFN's CPU inference (float32): routing, dispatch, GEMMs and combine.

``native_cpu.c`` (next to this file) is plain C (AVX2 + FMA intrinsics, OpenMP) without
Python or PyTorch headers.  At first use it is compiled with the system C compiler (``$CC``,
else ``cc``; flags :data:`FLAGS`) into a cache directory (``$ESPNET_OMNIROUTER_CACHE``, else
``$XDG_CACHE_HOME/espnet_omnirouter`` or ``~/.cache/espnet_omnirouter``; the file name carries
a hash of the source, the compiler and the flags, so a change rebuilds it) and loaded with
ctypes.  Its OpenMP loops bind to the ``libgomp.so.1`` that PyTorch has loaded, so they run
on PyTorch's threads (``torch.set_num_threads``).  :func:`available` checks the kernels once
against PyTorch on small problems.  Where they cannot run (no compiler, a CPU without AVX2/FMA,
a failed check), it returns False, says why in :data:`why_not`, and the experts and router
take their PyTorch paths; ``ESPNET_OMNIROUTER_NATIVE=0`` turns it off.

Why: at decoding sizes (one utterance, ~100-500 frames per FFN) the PyTorch version of the
non-GEMM steps (router, sort, gathers, bias rows, gate, scatter) costs a few microseconds
per operator and per Python call, and MKL's small GEMMs first copy each expert's weights
(``benchmarks/encoder_ffn_parts.py``); here the FFN is one call when the first GEMM can apply
the activation itself (ReLU, SiLU and what :func:`register_activation` declares equal to one,
such as ESPnet's Swish), else one call on each side of it, and the GEMM streams a copy of
the weights packed once (:func:`pack`).
"""
import ctypes
import hashlib
import os
import platform
import subprocess
import sys
import tempfile
from typing import Optional

import torch

SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "native_cpu.c")
FLAGS = ("-O3", "-mavx2", "-mfma", "-fopenmp", "-shared", "-fPIC", "-std=gnu99")

_P, _I, _I64 = ctypes.c_void_p, ctypes.c_int, ctypes.c_int64
# The activations the first GEMM can apply itself (native_cpu.c's ACT_*), by module type;
# register_activation adds modules that compute the same function.
ACT_NONE, ACT_RELU, ACT_SILU = 0, 1, 2
_ACT_NAMES = {"relu": ACT_RELU, "silu": ACT_SILU}
_ACTIVATIONS = {torch.nn.ReLU: ACT_RELU, torch.nn.SiLU: ACT_SILU}

_lib = None
_checked: Optional[bool] = None
why_not = ""  # why available() is False ("" while it is True or not yet asked)


def cache_dir() -> str:
    """Where the compiled library is kept."""
    if os.environ.get("ESPNET_OMNIROUTER_CACHE"):
        return os.environ["ESPNET_OMNIROUTER_CACHE"]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "espnet_omnirouter")


# Read when this module is imported, so that a process compiles the C that matches the ctypes
# signatures below even if the file changes before its first use (a package upgrade or an
# edit while a long training runs; its first evaluation would otherwise load a library whose
# functions take other arguments).
with open(SOURCE, "rb") as _f:
    _SOURCE_TEXT = _f.read()


def _build() -> str:
    """Compile the ``native_cpu.c`` read at import unless the cache has it; returns the
    library's path."""
    cc = os.environ.get("CC", "cc")
    key = hashlib.sha256(_SOURCE_TEXT + repr((cc, FLAGS, sys.platform)).encode()).hexdigest()[:16]
    path = os.path.join(cache_dir(), f"native_cpu-{key}.so")
    if not os.path.exists(path):
        os.makedirs(cache_dir(), exist_ok=True)
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=cache_dir())
        os.close(fd)
        src = tmp[: -len(".so")] + ".c"
        try:
            with open(src, "wb") as f:
                f.write(_SOURCE_TEXT)
            subprocess.run([cc, *FLAGS, "-o", tmp, src, "-lm"], check=True, capture_output=True, text=True)
            os.replace(tmp, path)  # atomic: concurrent processes never load a half-written file
        finally:
            for name in (tmp, src):
                if os.path.exists(name):
                    os.remove(name)
    return path


def _load():
    lib = ctypes.CDLL(_build())
    lib.moe_supported.restype = _I
    lib.moe_route.argtypes = [_P, _P, _I64, _I, _I, _I, _P, _P, _P, _P]
    lib.moe_route.restype = None
    lib.moe_experts_in.argtypes = [_I64, _I, _I, _I, _I, _P, _P, _P, _P, _P, _I, _P, _P, _P, _P]
    lib.moe_experts_in.restype = _I
    lib.moe_experts.argtypes = [_I64, _I, _I, _I, _I, _I64, _P, _P, _P, _P, _P, _I, _P, _P, _P, _P, _P, _P, _P, _P]
    lib.moe_experts.restype = _I
    lib.moe_experts_out.argtypes = [_I64, _I, _I, _I, _I, _I64, _P, _P, _P, _P, _P, _P, _P, _P, _P]
    lib.moe_experts_out.restype = None
    lib.moe_pack.argtypes = [_P, _I, _I, _I, _P]
    lib.moe_pack.restype = None
    lib.moe_expert_gemm.argtypes = [_P, _P, _P, _P, _P, _I, _I, _I]
    lib.moe_expert_gemm.restype = None
    lib.moe_slot.argtypes = [_I64, _I, _I, _I, _I, _I64, _P, _P, _P, _P, _P, _P, _P, _P, _P, _I, _P, _P, _P]
    lib.moe_slot.restype = _I
    lib.duo_slot.argtypes = [_I64, _I, _I, _I64, _P, _P, _P, _P, _I, _P, _P, _P, _P, _P, _P, _P, _P, _I, _P]
    lib.duo_slot.restype = _I
    return lib


def available() -> bool:
    """Whether the kernels can run here (built, loaded and checked once per process)."""
    global _lib, _checked, why_not
    if _checked is None:
        _checked = False
        if os.environ.get("ESPNET_OMNIROUTER_NATIVE", "1") == "0":
            why_not = "ESPNET_OMNIROUTER_NATIVE=0"
        elif platform.machine().lower() not in ("x86_64", "amd64"):
            why_not = f"the kernels are x86-64 (AVX2), this is {platform.machine()}"
        else:
            try:
                _lib = _load()
                if not _lib.moe_supported():
                    why_not = "this CPU has no AVX2/FMA"
                else:
                    _checked = _self_check()
                    why_not = "" if _checked else "the compiled kernels disagree with PyTorch"
            except (OSError, subprocess.CalledProcessError) as e:
                detail = getattr(e, "stderr", "") or str(e)
                why_not = f"cannot build or load {SOURCE}: {detail.strip()[:500]}"
    return _checked


def register_activation(module_type: type, same_as: str) -> None:
    """Declare that modules of exactly ``module_type`` compute ``same_as`` ("relu": max(x, 0);
    "silu": x * sigmoid(x)), so that the C GEMM applies it (e.g. ESPnet's Swish is "silu")."""
    if same_as not in _ACT_NAMES:
        raise ValueError(f"register_activation: same_as must be one of {sorted(_ACT_NAMES)}, got {same_as!r}")
    _ACTIVATIONS[module_type] = _ACT_NAMES[same_as]


def activation_code(module: torch.nn.Module) -> int:
    """The ``ACT_*`` code of an activation module (ACT_NONE: the caller applies it)."""
    return _ACTIVATIONS.get(type(module), ACT_NONE)


def _ptr(t: Optional[torch.Tensor]) -> Optional[int]:
    return None if t is None else t.data_ptr()


def route(x: torch.Tensor, weight: torch.Tensor, top_k: int):
    """Router of ``[n, d]`` float32 frames and an ``[E, d]`` weight: ``(logits, probs, expert,
    gate)``, ``[n, E]`` float32 twice, ``[n, k]`` int64 and float32 (best first)."""
    n, e = x.shape[0], weight.shape[0]
    logits, probs = x.new_empty(n, e), x.new_empty(n, e)
    expert, gate = torch.empty(n, top_k, dtype=torch.long), x.new_empty(n, top_k)
    _lib.moe_route(x.data_ptr(), weight.data_ptr(), n, x.shape[1], e, top_k, logits.data_ptr(), probs.data_ptr(),
                   expert.data_ptr(), gate.data_ptr())
    return logits, probs, expert, gate


def pack(w: torch.Tensor) -> torch.Tensor:
    """Stacked expert weights ``[E, k, n]`` (float32) in the layout the GEMM streams: ``[E,
    ceil(n / 16), k, 16]``, each 16-column tile contiguous, zero past column ``n``."""
    e, k, n = w.shape
    w = w.detach().contiguous()
    packed = w.new_empty(e, (n + 15) // 16, k, 16)
    _lib.moe_pack(w.data_ptr(), e, k, n, packed.data_ptr())
    return packed


def expert_gemm(a: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor, c: torch.Tensor, ends: torch.Tensor) -> None:
    """``c[s_e] = bias[e] + a[s_e] @ w[e]`` in place for the experts' consecutive row slices
    ``s_e`` (``ends``: ``[E]`` int32 end rows), ``w`` ``[E, k, n]`` given packed (:func:`pack`);
    ``a`` ``[m, k]``, ``c`` ``[m, n]``, ``bias`` ``[E, n]``: float32, contiguous.  The GEMMs of
    :func:`experts` alone (for benchmarks)."""
    e, k, n = bias.shape[0], a.shape[1], c.shape[1]
    _lib.moe_expert_gemm(a.data_ptr(), packed.data_ptr(), bias.data_ptr(), c.data_ptr(), ends.data_ptr(), e, k, n)


def experts(flat, index, expert, gate, w1, b1, w2, b2, hidden_fn, act: int = ACT_NONE) -> torch.Tensor:
    """``out[row(t)] (+)= sum_j gate[t, j] * FFN_{expert[t, j]}(flat[row(t)])``.

    Args:
        flat: ``[R, d]`` float32, contiguous: all frames.
        index: ``[n]`` int64, the row of ``flat`` of each routed frame, or None (``n == R``).
        expert: ``[n, k]`` int64 and gate ``[n, k]`` float32: each routed frame's choices.
        w1, b1, w2, b2: the expert weights, ``w1`` ``[E, d, h]`` and ``w2`` ``[E, h, d]``
            packed by :func:`pack`, ``b1`` ``[E, h]``, ``b2`` ``[E, d]`` (float32, contiguous).
        hidden_fn: the activation (and dropout) applied to the ``[n * k, h]`` hidden units.
        act: an ``ACT_*`` code: the C GEMM applies that activation itself (one call, no
            ``hidden_fn``); ACT_NONE (default): ``hidden_fn`` runs between two calls.

    Returns:
        ``[R, d]`` float32, zero on rows not routed.
    """
    if act != ACT_NONE and act not in _ACT_NAMES.values():
        raise ValueError(f"native.experts: act must be ACT_NONE, ACT_RELU or ACT_SILU, got {act!r}")
    n, k = expert.shape
    e, h = b1.shape
    d = flat.shape[1]
    m = n * k
    xs, hidden = flat.new_empty(m, d), flat.new_empty(m, h)
    order, ends = torch.empty(m, dtype=torch.long), torch.empty(e, dtype=torch.int32)
    out = flat.new_empty(flat.shape[0], d)
    ptrs = (expert.data_ptr(), _ptr(index), flat.data_ptr(), w1.data_ptr(), b1.data_ptr())
    if act != ACT_NONE:
        failed = _lib.moe_experts(n, k, e, d, h, flat.shape[0], *ptrs, act, w2.data_ptr(), b2.data_ptr(),
                                  gate.data_ptr(), xs.data_ptr(), hidden.data_ptr(), order.data_ptr(), ends.data_ptr(),
                                  out.data_ptr())
    else:
        failed = _lib.moe_experts_in(n, k, e, d, h, *ptrs, ACT_NONE, xs.data_ptr(), hidden.data_ptr(),
                                     order.data_ptr(), ends.data_ptr())
    if failed:
        raise ValueError(f"MoE routing chose an expert outside 0..{e - 1}")
    if act == ACT_NONE:
        hidden = hidden_fn(hidden).contiguous()
        _lib.moe_experts_out(n, k, e, d, h, flat.shape[0], order.data_ptr(), ends.data_ptr(), _ptr(index),
                             hidden.data_ptr(), w2.data_ptr(), b2.data_ptr(), gate.data_ptr(), xs.data_ptr(),
                             out.data_ptr())
    return out


def moe_slot(flat, index, router_weight, top_k: int, w1, b1, w2, b2, act: int):
    """An MoE FFN at inference in one call: the router on the routed frames, then :func:`experts`.

    Args:
        flat: ``[R, d]`` float32, contiguous: all frames.
        index: ``[n]`` int64, the row of ``flat`` of each routed frame, or None (``n == R``).
        router_weight: ``[E, d]`` float32, contiguous; ``top_k``: experts per frame.
        w1, b1, w2, b2: the experts as :func:`experts` takes them.
        act: ACT_RELU or ACT_SILU, applied by the first GEMM.

    Returns:
        ``(out, logits, probs, expert, gate)``: ``[R, d]`` float32 (0 on rows not routed), ``[n, E]``
        float32 twice, ``[n, k]`` int64 and float32, as :func:`route` gives them.
    """
    if act not in _ACT_NAMES.values():
        raise ValueError(f"native.moe_slot: act must be ACT_RELU or ACT_SILU, got {act!r}")
    n, d, e, h = flat.shape[0] if index is None else index.shape[0], flat.shape[1], b1.shape[0], b1.shape[1]
    logits, probs = flat.new_empty(n, e), flat.new_empty(n, e)
    expert, gate = torch.empty(n, top_k, dtype=torch.long), flat.new_empty(n, top_k)
    out = flat.new_empty(flat.shape[0], d)
    if _lib.moe_slot(n, top_k, e, d, h, flat.shape[0], _ptr(index), flat.data_ptr(), router_weight.data_ptr(),
                     logits.data_ptr(), probs.data_ptr(), expert.data_ptr(), gate.data_ptr(), w1.data_ptr(),
                     b1.data_ptr(), act, w2.data_ptr(), b2.data_ptr(), out.data_ptr()):
        raise MemoryError(f"native.moe_slot: cannot allocate the buffers of {n} x {top_k} assignments")
    return out, logits, probs, expert, gate


class SlotPaths:
    """The paths of a Duo slot as :func:`duo_slot` takes them: the weights' pointer arrays, built once.

    Args:
        weights: per path ``(w1, b1, w2, b2)`` (``w1`` ``[1, d, h]`` and ``w2`` ``[1, h, d]`` packed by
            :func:`pack`, ``b1`` ``[1, h]``, ``b2`` ``[1, d]``, float32, contiguous), or None for an
            empty (skip) path; kept alive here.
        act: the ``ACT_*`` code the first GEMM applies (ACT_RELU or ACT_SILU).
    """

    def __init__(self, weights, act: int):
        if act not in _ACT_NAMES.values():
            raise ValueError(f"native.SlotPaths: act must be ACT_RELU or ACT_SILU, got {act!r}")
        self.weights, self.act, p = list(weights), act, len(weights)
        self._arrays = [(ctypes.c_int * p)(*(0 if w is None else w[1].shape[1] for w in self.weights))]
        self._arrays += [(ctypes.c_void_p * p)(*(None if w is None else w[i].data_ptr() for w in self.weights))
                         for i in range(4)]
        # The arrays' addresses (ints convert fastest at each call): widths, w1, b1, w2, b2.
        self.widths, *self.pointers = (ctypes.addressof(a) for a in self._arrays)


def duo_slot(flat, index, paths: SlotPaths, router_weight=None, shift=None, path=None, fixed: int = -1):
    """A Duo slot at inference in one call (gate 1): each routed frame through its path's FFN.

    Args:
        flat: ``[R, d]`` float32, contiguous: all frames.
        index: ``[n]`` int64, the row of ``flat`` of each routed frame, or None (``n == R``).
        paths: the slot's paths.
        router_weight: ``[P, d]`` float32: the router chooses each frame's path (the most
            probable, or with ``shift`` ``[P]`` float32 the argmax of the logits minus it: the cost
            bias times each path's cost).
        path: with a router, None or an ``[n, 1]`` int64 tensor to write the chosen paths into;
            without, ``[n]`` or ``[n, 1]`` int64: the path of each frame; or ``fixed``: one path
            for all frames (``path`` None).

    Returns:
        ``(out, path, logits, probs)``: ``[R, d]`` float32 (0 on skip frames and rows not
        routed), the paths (``[n, 1]`` int64 chosen by the router; the given ``path``; None for
        ``fixed``), and with the router ``[n, P]`` float32 twice (else None).
    """
    n, d, p = flat.shape[0] if index is None else index.shape[0], flat.shape[1], len(paths.weights)
    logits = probs = None
    if router_weight is not None:
        logits, probs = flat.new_empty(n, p), flat.new_empty(n, p)
        if path is None:
            path = torch.empty(n, 1, dtype=torch.long)
    elif path is None and not 0 <= fixed < p:
        raise ValueError(f"native.duo_slot: give a router, a path per frame or a fixed path in 0..{p - 1}")
    out = flat.new_empty(flat.shape[0], d)
    failed = _lib.duo_slot(n, d, p, flat.shape[0], _ptr(index), flat.data_ptr(), _ptr(router_weight), _ptr(shift),
                           fixed, _ptr(logits), _ptr(probs), _ptr(path), paths.widths, *paths.pointers, paths.act,
                           out.data_ptr())
    if failed == -2:
        raise MemoryError(f"native.duo_slot: cannot allocate the buffers of {n} frames")
    if failed:
        raise ValueError(f"Duo routing chose a path outside 0..{p - 1}")
    return out, path, logits, probs


def _self_check() -> bool:
    """The kernels against PyTorch on small problems: top-1 and top-2, with and without index,
    widths with full 16-column tiles and a remainder, slices of more and fewer than 6 rows,
    the activation applied by PyTorch and by the GEMM (relu, silu); the fused MoE FFN over
    padding; a Duo slot routed with a cost shift, over padding, and with one path for all frames."""
    gen = torch.Generator().manual_seed(0)
    n, d, h, e = 37, 20, 40, 4
    x, w = torch.randn(n, d, generator=gen), torch.randn(e, d, generator=gen)
    w1, b1 = torch.randn(e, d, h, generator=gen), torch.randn(e, h, generator=gen)
    w2, b2 = torch.randn(e, h, d, generator=gen), torch.randn(e, d, generator=gen)
    logits, probs, expert, gate = route(x, w, 2)
    want_probs = (x @ w.t()).softmax(-1)
    ok = torch.allclose(probs, want_probs, atol=1e-5) and torch.equal(expert, want_probs.topk(2).indices)
    cases = ((1, None, torch.relu, ACT_NONE), (2, torch.arange(0, n, 3), torch.relu, ACT_RELU),
             (1, torch.arange(1, n, 2), torch.nn.functional.silu, ACT_SILU))
    for k, index, fn, act in cases:
        rows = x if index is None else x[index]
        ex, g = expert[: rows.shape[0], :k].contiguous(), gate[: rows.shape[0], :k].contiguous()
        y = fn(torch.einsum("nd,nkdh->nkh", rows, w1[ex]) + b1[ex])
        y = (torch.einsum("nkh,nkhd->nkd", y, w2[ex]) + b2[ex]).mul(g.unsqueeze(2)).sum(1)
        want = y if index is None else torch.zeros_like(x).index_add_(0, index, y)
        got = experts(x, index, ex, g, pack(w1), b1, pack(w2), b2, fn, act)
        ok = ok and torch.allclose(got, want, atol=1e-4, rtol=1e-4)
    # The fused MoE FFN (router and experts in one call) over padding, top-2.
    index = torch.arange(1, n, 2)
    got, _, got_probs, got_expert, _ = moe_slot(x, index, w, 2, pack(w1), b1, pack(w2), b2, ACT_SILU)
    _, probs, ex, g = route(x[index].contiguous(), w, 2)
    want = experts(x, index, ex, g, pack(w1), b1, pack(w2), b2, None, ACT_SILU)
    ok = ok and torch.equal(got_expert, ex) and torch.allclose(got_probs, probs) and torch.allclose(got, want)
    # A Duo slot: paths of widths 40 and 7 and a skip, routed frames every other row, the router
    # with a cost shift; then every frame on the small path (one path, no index: direct).
    duo = [(pack(w1[:1]), b1[:1].contiguous(), pack(w2[:1]), b2[:1].contiguous()),
           (pack(w1[1:2, :, :7]), b1[1:2, :7].contiguous(), pack(w2[1:2, :7]), b2[1:2].contiguous()), None]
    plan, index, shift = SlotPaths(duo, ACT_SILU), torch.arange(0, n, 2), torch.tensor([0.5, 0.1, 0.0])
    got, path, _, _ = duo_slot(x, index, plan, w[:3].contiguous(), shift)
    rows = x[index]
    want_path = (rows @ w[:3].t() - shift).argmax(-1)
    small = torch.nn.functional.silu(rows @ w1[1, :, :7] + b1[1, :7]) @ w2[1, :7] + b2[1]
    big = torch.nn.functional.silu(rows @ w1[0] + b1[0]) @ w2[0] + b2[0]
    y = torch.where(want_path.unsqueeze(1) == 0, big, torch.where(want_path.unsqueeze(1) == 1, small, 0.0))
    ok = ok and torch.equal(path[:, 0], want_path) and bool((want_path == 2).any())
    ok = ok and torch.allclose(got, torch.zeros_like(x).index_copy_(0, index, y), atol=1e-4, rtol=1e-4)
    got = duo_slot(x, None, plan, fixed=1)[0]
    want = torch.nn.functional.silu(x @ w1[1, :, :7] + b1[1, :7]) @ w2[1, :7] + b2[1]
    ok = ok and torch.allclose(got, want, atol=1e-4, rtol=1e-4)
    return bool(ok)
