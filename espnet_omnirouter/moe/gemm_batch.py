"""Variable-size batched GEMM on CPU: MKL's group API ``cblas_sgemm_batch`` (torch + ctypes).

PyTorch's x86 builds link MKL into ``libtorch_cpu.so`` and export its CBLAS symbols, so
one call can multiply every expert's slice of rows by that expert's weight matrix, each
slice of its own height, with MKL spreading the small GEMMs over the threads that
``torch.set_num_threads`` gave it.  At decoding sizes (a few dozen rows per expert) that
is what neither PyTorch operator offers: ``mm`` per slice pays a call and a poorly
threaded small GEMM per expert, ``baddbmm`` needs equal heights (padding).

:func:`available` loads the symbol once and checks it on a small problem against
``torch.mm`` (LP64 integers, row-major); where it is missing or wrong (other builds,
other platforms) it returns False and the experts take their other paths.
"""
import ctypes
import os
from typing import Dict, List, Optional, Tuple

import torch

_ROW_MAJOR, _NO_TRANS = 101, 111  # CBLAS_LAYOUT, CBLAS_TRANSPOSE
_sgemm_batch = None
_checked: Optional[bool] = None
# Per (groups, k, n, beta): the argument arrays that do not depend on the data.
_fixed: Dict[Tuple[int, int, int, float], tuple] = {}


def _load():
    lib = ctypes.CDLL(os.path.join(os.path.dirname(torch.__file__), "lib", "libtorch_cpu.so"))
    fn = lib.cblas_sgemm_batch  # AttributeError where the build does not export it
    fn.restype = None
    return fn


def available() -> bool:
    """Whether :func:`gemm_groups` can run here (loaded and checked once per process)."""
    global _sgemm_batch, _checked
    if _checked is None:
        try:
            _sgemm_batch = _load()
            gen = torch.Generator().manual_seed(0)
            a, b = torch.randn(7, 5, generator=gen), torch.randn(2, 5, 3, generator=gen)
            c = torch.ones(7, 3)
            _gemm_groups(a, b, c, [4, 3], 1.0)
            want = torch.cat([a[:4] @ b[0], a[4:] @ b[1]]) + 1
            _checked = bool(torch.allclose(c, want, atol=1e-5, rtol=1e-5))
        except (OSError, AttributeError):
            _checked = False
    return _checked


def _fixed_args(groups: int, k: int, n: int, beta: float) -> tuple:
    key = (groups, k, n, beta)
    if key not in _fixed:
        ints, floats = ctypes.c_int * groups, ctypes.c_float * groups
        _fixed[key] = (
            ints(*[_NO_TRANS] * groups),
            ints(*[n] * groups),
            ints(*[k] * groups),  # k, and lda
            floats(*[1.0] * groups),
            ints(*[n] * groups),  # ldb, ldc
            floats(*[beta] * groups),
            ints(*[1] * groups),  # one GEMM per group
        )
    return _fixed[key]


def gemm_groups(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor, sizes: List[int], beta: float = 0.0) -> None:
    """``c[s_e] = a[s_e] @ b[e] + beta * c[s_e]`` in place, for the consecutive row slices
    ``s_e`` of heights ``sizes`` (one GEMM per non-empty slice, all in one MKL call).

    Args:
        a: ``[M, k]`` float32, contiguous, on CPU.
        b: ``[E, k, n]`` float32, contiguous: one matrix per slice.
        c: ``[M, n]`` float32, contiguous; read only where ``beta != 0``.
        sizes: ``[E]`` slice heights, ``sum(sizes) == M``.
    """
    if not available():
        raise RuntimeError("gemm_groups: this PyTorch build does not export MKL's cblas_sgemm_batch")
    m_rows, k = a.shape
    n = b.shape[2]
    if not (a.is_contiguous() and b.is_contiguous() and c.is_contiguous()):
        raise ValueError("gemm_groups needs contiguous tensors")
    if a.dtype != torch.float32 or b.dtype != torch.float32 or c.dtype != torch.float32:
        raise ValueError(f"gemm_groups runs float32, got {a.dtype}, {b.dtype}, {c.dtype}")
    if len(sizes) != b.shape[0] or sum(sizes) != m_rows or b.shape[1] != k or tuple(c.shape) != (m_rows, n):
        raise ValueError(
            f"gemm_groups: a {tuple(a.shape)}, b {tuple(b.shape)}, c {tuple(c.shape)}, sizes {sizes} do not match"
        )
    _gemm_groups(a, b, c, sizes, float(beta))


def _gemm_groups(a, b, c, sizes, beta):
    k = a.shape[1]
    n = b.shape[2]
    heights, a_ptr, b_ptr, c_ptr = [], [], [], []
    row, (a0, b0, c0) = 0, (a.data_ptr(), b.data_ptr(), c.data_ptr())
    for e, size in enumerate(sizes):
        if size:
            heights.append(size)
            a_ptr.append(a0 + row * k * 4)
            b_ptr.append(b0 + e * k * n * 4)
            c_ptr.append(c0 + row * n * 4)
        row += size
    groups = len(heights)
    if groups == 0:
        return
    trans, ns, ks, alpha, ldc, betas, group_size = _fixed_args(groups, k, n, beta)
    ptrs = ctypes.c_void_p * groups
    _sgemm_batch(
        _ROW_MAJOR, trans, trans, (ctypes.c_int * groups)(*heights), ns, ks, alpha,
        ptrs(*a_ptr), ks, ptrs(*b_ptr), ldc, betas, ptrs(*c_ptr), ldc, groups, group_size,
    )
