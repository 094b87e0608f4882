"""Stacked feed-forward experts with sort-based dispatch (torch only).

Every expert is a slice of one stacked Parameter, so DDP never sees an unused parameter
even when an expert receives no frames in a step.
"""
import math

import torch
from torch import nn


def grouped_mm_supported(x: torch.Tensor, hidden: int) -> bool:
    """Whether ``torch._grouped_mm`` can run the experts on ``x``.

    On CPU it handles float32/bfloat16/float16 (with autograd); on CUDA we use it for
    bfloat16 on Hopper or newer, where its kernels are fast, and when the row widths meet
    its 16-byte alignment.  Everything else takes the portable per-slice path.
    """
    if not hasattr(torch, "_grouped_mm"):
        return False
    if x.is_cuda:
        return (
            x.dtype == torch.bfloat16
            and torch.cuda.get_device_capability(x.device)[0] >= 9
            and x.shape[1] % 8 == 0
            and hidden % 8 == 0
        )
    return x.device.type == "cpu" and x.dtype in (torch.float32, torch.bfloat16, torch.float16)


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
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # Each expert initialised like an nn.Linear of its own shape.
        for weight, bias in ((self.w1, self.b1), (self.w2, self.b2)):
            bound = 1.0 / math.sqrt(weight.shape[1])
            nn.init.uniform_(weight, -bound, bound)
            nn.init.uniform_(bias, -bound, bound)

    def forward(self, x: torch.Tensor, counts: torch.Tensor, expert: torch.Tensor) -> torch.Tensor:
        """Run each expert on its contiguous slice of frames.

        Args:
            x: ``[M, d]`` frames sorted by expert (expert 0's frames first).
            counts: ``[E]`` int64, number of frames of each expert (sums to ``M``).
            expert: ``[M]`` int64, the expert of each row of ``x`` (non-decreasing).

        Returns:
            ``[M, d]`` expert outputs, in the order of ``x``.
        """
        if grouped_mm_supported(x, self.w1.shape[2]):
            # One kernel per matmul, no host sync: offsets are the end row of each expert.
            offsets = counts.cumsum(0).to(torch.int32)
            hidden = torch._grouped_mm(x, self.w1.to(x.dtype), offs=offsets)
            hidden = self.dropout(self.activation(hidden + self.b1.to(x.dtype)[expert]))
            out = torch._grouped_mm(hidden, self.w2.to(x.dtype), offs=offsets)
            return out + self.b2.to(x.dtype)[expert]
        # Portable path: one host sync for the slice sizes, then one matmul per expert slice.
        sizes = counts.tolist()
        hidden = torch.cat(
            [torch.addmm(self.b1[e], xe, self.w1[e]) for e, xe in enumerate(x.split(sizes))]
        )
        hidden = self.dropout(self.activation(hidden))
        return torch.cat(
            [torch.addmm(self.b2[e], he, self.w2[e]) for e, he in enumerate(hidden.split(sizes))]
        )

    def extra_repr(self) -> str:
        e, d, h = self.w1.shape
        return f"num_experts={e}, d_model={d}, hidden={h}"
