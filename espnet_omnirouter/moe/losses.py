"""Auxiliary router losses (torch only).

Both take the routing of the non-padded frames only, so padding can never enter them, and
both accept leading batch dimensions (e.g. ``[L, N, E]``: the ``L`` MoE layers of one
forward at once, one loss per layer).  Nothing here waits for the device.
"""
import torch


def expert_fractions(expert: torch.Tensor, num_experts: int) -> torch.Tensor:
    """Fraction of the frames that chose each expert.

    Args:
        expert: ``[..., N]`` int64 expert of each frame.
        num_experts: ``E``.

    Returns:
        ``[..., E]`` float32, summing to 1 over ``E`` (0 when ``N == 0``).  Counted with a
        scatter-add, not ``torch.bincount``, which on CUDA waits for the device to size its
        output.
    """
    counts = torch.zeros(*expert.shape[:-1], num_experts, device=expert.device)
    counts.scatter_add_(-1, expert, torch.ones_like(expert, dtype=counts.dtype))
    return counts / max(expert.shape[-1], 1)


def load_balance_loss(probs: torch.Tensor, expert: torch.Tensor) -> torch.Tensor:
    """Switch Transformer load-balancing loss ``E * sum_i f_i * P_i``.

    Args:
        probs: ``[..., N, E]`` float32 router probabilities of the non-padded frames.
        expert: ``[..., N, k]`` chosen experts; ``f_i`` counts the first choice only
            (Switch), so the loss is 1 for perfectly uniform routing.

    Returns:
        ``[...]`` float32 (a scalar for one layer); 0 when ``N == 0``.
    """
    num_frames, num_experts = probs.shape[-2:]
    if num_frames == 0:
        return probs.sum((-2, -1))
    fraction = expert_fractions(expert[..., 0], num_experts)  # f_i: not differentiable (argmax)
    mean_prob = probs.mean(dim=-2)  # P_i: differentiable
    return num_experts * (fraction * mean_prob).sum(-1)


def router_z_loss(logits: torch.Tensor) -> torch.Tensor:
    """ST-MoE router z-loss: mean over frames of ``logsumexp(logits) ** 2``.

    Args:
        logits: ``[..., N, E]`` float32 router logits of the non-padded frames.

    Returns:
        ``[...]`` float32 (a scalar for one layer); 0 when ``N == 0``.
    """
    if logits.shape[-2] == 0:
        return logits.sum((-2, -1))
    return torch.logsumexp(logits, dim=-1).square().mean(-1)
