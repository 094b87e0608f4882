"""Token router for top-k Mixture-of-Experts layers (torch only).

The router is a bias-free linear map from the model width ``d`` to ``E`` expert logits.
Logits and probabilities are always computed in float32, also under autocast, because
softmax over a handful of experts is sensitive to bf16 rounding and the auxiliary losses
(load balance, z-loss) are computed from them.
"""
from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import nn

from espnet_omnirouter.moe import native
from espnet_omnirouter.moe.experts import onnx_exporting


@dataclass
class Routing:
    """The routing decision for ``N`` frames.

    Attributes:
        expert: ``[N, k]`` int64, chosen experts, best first.
        gate: ``[N, k]`` float32, full-softmax probability of each chosen expert
            (Switch Transformer: not renormalised over the k choices).
        probs: ``[N, E]`` float32, softmax of the logits.
        logits: ``[N, E]`` float32 router logits.
    """

    expert: torch.Tensor
    gate: torch.Tensor
    probs: torch.Tensor
    logits: torch.Tensor

    def select(self, rows: torch.Tensor) -> "Routing":
        """The routing of frames ``rows`` (``[M]`` int64 indices into the ``N``), graph kept."""
        return Routing(*(t.index_select(0, rows) for t in (self.expert, self.gate, self.probs, self.logits)))


# A selection-noise hook: maps float32 logits [N, E] to the scores whose top-k picks the
# experts.  Used by RoE inference (Gumbel noise); gates still come from the clean softmax.
SelectionNoise = Callable[[torch.Tensor], torch.Tensor]


class Router(nn.Module):
    """Linear top-k router.

    Args:
        d_model: input width ``d``.
        num_experts: number of experts ``E`` (>= 1).
        top_k: experts per frame (1 = Switch routing).
        jitter: multiplicative input jitter ``eps``; at training time the router input is
            multiplied by ``U(1 - eps, 1 + eps)`` (Switch Transformer). 0 disables it.
    """

    def __init__(self, d_model: int, num_experts: int, top_k: int = 1, jitter: float = 0.0):
        super().__init__()
        if num_experts < 1:
            raise ValueError(f"num_experts must be >= 1, got {num_experts}")
        if not 1 <= top_k <= num_experts:
            raise ValueError(f"top_k must be in [1, num_experts={num_experts}], got {top_k}")
        if not 0.0 <= jitter < 1.0:
            raise ValueError(f"router_jitter must be in [0, 1), got {jitter}")
        self.num_experts = num_experts
        self.top_k = top_k
        self.jitter = jitter
        self.weight = nn.Parameter(torch.empty(num_experts, d_model))
        self.reset_parameters()
        # Set by RoE inference; None for normal (argmax) routing.
        self.selection_noise: Optional[SelectionNoise] = None

    def reset_parameters(self) -> None:
        # Switch Transformer: truncated normal with scale 0.1 / fan_in.
        std = (0.1 / self.weight.shape[1]) ** 0.5
        nn.init.trunc_normal_(self.weight, std=std, a=-2 * std, b=2 * std)

    def forward(self, x: torch.Tensor) -> Routing:
        """Route frames.

        Args:
            x: ``[N, d]`` frames (padding already removed).

        Returns:
            Routing for the ``N`` frames.
        """
        if self._native_runs(x):
            logits, probs, expert, gate = native.route(x.contiguous(), self.weight.contiguous(), self.top_k)
            return Routing(expert=expert, gate=gate, probs=probs, logits=logits)
        with torch.autocast(device_type=x.device.type, enabled=False):
            x = x.float()
            if self.training and self.jitter > 0:
                x = x * torch.empty_like(x).uniform_(1.0 - self.jitter, 1.0 + self.jitter)
            logits = nn.functional.linear(x, self.weight.float())
            probs = logits.softmax(dim=-1)
            if self.selection_noise is None and self.top_k == 1:
                # max, not topk: CUDA's topk kernel took 0.4 ms of a 13 ms MoE step at 256k
                # frames (benchmarks/results/gpu_h200_2026-11/profile_ffn_h200_b8292a2.log); max is one reduction.
                gate, expert = probs.max(dim=-1, keepdim=True)
            elif self.selection_noise is None:
                gate, expert = probs.topk(self.top_k, dim=-1)
            else:
                expert = self.selection_noise(logits).topk(self.top_k, dim=-1).indices
                gate = probs.gather(-1, expert)
        return Routing(expert=expert, gate=gate, probs=probs, logits=logits)

    def _native_runs(self, x: torch.Tensor) -> bool:
        """Whether the C router (:mod:`.native`) computes this forward: float32 CPU inputs and
        weight, autograd not recording, no jitter drawn, no selection noise, not traced by
        torch.compile or ONNX export (the same function as the PyTorch code below, in one call)."""
        return (
            x.device.type == "cpu"
            and not torch.compiler.is_compiling()
            and not onnx_exporting()
            and x.dtype == torch.float32
            and self.weight.dtype == torch.float32
            and self.selection_noise is None
            and not (self.training and self.jitter > 0)
            and not (torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad))
            and native.available()
        )

    def extra_repr(self) -> str:
        d = self.weight.shape[1]
        return f"d_model={d}, num_experts={self.num_experts}, top_k={self.top_k}, jitter={self.jitter}"
