"""Experts of different widths, some of them empty (torch only): the paths of a Duo FFN slot.

A Duo slot routes each frame to one of ``P`` paths: a big FFN, a small FFN, or skip (no
module: the output is 0 and the residual connection carries the frame).  :class:`PathExperts`
holds them and has the ``combine`` of :class:`~espnet_omnirouter.moe.experts.Experts`, so
:class:`~espnet_omnirouter.moe.layer.MoEFeedForward`'s sort-based dispatch runs it unchanged:
the assignments arrive sorted by path, each non-empty path runs one single-expert
``Experts`` on its own rows (whichever of its implementations suits the size), and the rows
of a skip path are never read.
"""
from typing import Callable, List, Sequence, Tuple

import torch
from torch import nn

from espnet_omnirouter.moe.experts import Experts, _put_rows, compute_dtype, records_grad


class PathExperts(nn.Module):
    """``P`` position-wise FFNs of hidden widths ``widths`` (0 = an empty path).

    Path ``p`` with ``widths[p] > 0`` is ``Experts(1, d_model, widths[p], ...)`` (its weights
    ``w1 [1, d, h_p]`` etc.); a path of width 0 has no parameters and outputs 0.

    Args:
        d_model: input/output width ``d``.
        widths: hidden width of each path, e.g. ``[576, 36, 0]`` for big, small, skip.
        activation: activation module shared by the paths.
        dropout_rate: dropout on the hidden units.
    """

    def __init__(self, d_model: int, widths: Sequence[int], activation: nn.Module, dropout_rate: float = 0.0):
        super().__init__()
        if not widths or any(w < 0 for w in widths) or not any(widths):
            raise ValueError(f"path widths must be >= 0 with at least one > 0, got {list(widths)}")
        self.num_experts = len(widths)
        self.widths: List[int] = list(widths)
        # ModuleDict keyed by path index: empty paths have no entry, so parameter names
        # (paths.0.w1, paths.1.w1) say which path they belong to.
        self.paths = nn.ModuleDict(
            {str(p): Experts(1, d_model, w, activation, dropout_rate) for p, w in enumerate(widths) if w > 0}
        )
        self.d_model = d_model

    def costs(self) -> torch.Tensor:
        """``[P]`` float32 FFN FLOPs per frame of each path relative to the widest (``4dh_p / 4dh_max``)."""
        widths = torch.tensor(self.widths, dtype=torch.float32)
        return widths / widths.max()

    def combine(
        self,
        flat: torch.Tensor,
        rows: torch.Tensor,
        ends: torch.Tensor,
        expert: torch.Tensor,
        gate: torch.Tensor,
        unique: bool,
    ) -> torch.Tensor:
        """``out[rows[i]] += gate[i] * path_{expert[i]}(flat[rows[i]])``, as ``Experts.combine``.

        Args:
            flat: ``[R, d]`` frames.
            rows: ``[M]`` int64 row of ``flat`` of each assignment, sorted by path.
            ends: ``[P]`` end (exclusive) of each path's assignments in ``rows``.
            expert: ``[M]`` int64 path of each assignment (non-decreasing).
            gate: ``[M]`` gate of each assignment.
            unique: whether ``rows`` has no repeated row.

        Returns:
            ``[R, d]`` in the compute dtype; 0 on rows not in ``rows`` and on skip rows.

        While autograd records, every path runs through ``Experts.combine`` (its
        implementations and custom backward), also a path that gets no rows (on 0 rows), so
        that its parameters take part in every backward (DDP needs no
        ``find_unused_parameters``); at inference a path without rows is not called.
        """
        bounds = [0] + ends.tolist()  # one host sync (free on CPU), as Experts' own paths
        if not records_grad(self, flat, gate):
            return self._infer(flat, rows, gate, bounds, unique)
        out = None
        for key, experts in self.paths.items():
            start, stop = bounds[int(key)], bounds[int(key) + 1]
            size = stop - start
            part = experts.combine(
                flat,
                rows[start:stop],
                ends.new_full((1,), size),
                expert.new_zeros(size),
                gate[start:stop],
                unique,
            )
            out = part if out is None else out + part
        return out

    def expert_ffns(self) -> List[Tuple[int, Callable[[torch.Tensor], torch.Tensor]]]:
        """``(p, FFN_p)`` for every non-empty path (as ``Experts.expert_ffns``; a skip path has none)."""
        return [(int(key), experts.dense) for key, experts in self.paths.items()]

    def _infer(self, flat, rows, gate, bounds, unique) -> torch.Tensor:
        """Without autograd: each non-empty path's rows through its FFN (one GEMM pair on
        exactly those rows), written into one output buffer; a path without rows is not called.
        At decoding sizes this is a fixed handful of operators per path, where
        ``Experts.combine`` would lay out a padded buffer for its single expert."""
        dtype = compute_dtype(flat)
        out = flat.new_zeros(flat.shape[0], self.d_model, dtype=dtype)
        for key, experts in self.paths.items():
            start, stop = bounds[int(key)], bounds[int(key) + 1]
            if start == stop:
                continue
            rows_p = rows[start:stop]
            y = experts.dense(flat.index_select(0, rows_p)).mul_(gate[start:stop].to(dtype).unsqueeze(1))
            _put_rows(out, rows_p, y, unique)
        return out

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, widths={self.widths}"
