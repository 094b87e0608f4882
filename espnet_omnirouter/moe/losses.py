"""Auxiliary router losses (torch only).

Both take the routing of the non-padded frames only, so padding can never enter them.
"""
import torch


def load_balance_loss(probs: torch.Tensor, expert: torch.Tensor) -> torch.Tensor:
    """Switch Transformer load-balancing loss ``E * sum_i f_i * P_i``.

    Args:
        probs: ``[N, E]`` float32 router probabilities of the non-padded frames.
        expert: ``[N, k]`` chosen experts; ``f_i`` counts the first choice only
            (Switch), so the loss is 1 for perfectly uniform routing.

    Returns:
        Scalar float32 tensor; 0 when ``N == 0``.
    """
    num_frames, num_experts = probs.shape
    if num_frames == 0:
        return probs.sum()
    counts = torch.bincount(expert[:, 0], minlength=num_experts).to(probs.dtype)
    fraction = counts / num_frames  # f_i: not differentiable (argmax)
    mean_prob = probs.mean(dim=0)  # P_i: differentiable
    return num_experts * (fraction * mean_prob).sum()


def router_z_loss(logits: torch.Tensor) -> torch.Tensor:
    """ST-MoE router z-loss: mean over frames of ``logsumexp(logits) ** 2``.

    Args:
        logits: ``[N, E]`` float32 router logits of the non-padded frames.

    Returns:
        Scalar float32 tensor; 0 when ``N == 0``.
    """
    if logits.shape[0] == 0:
        return logits.sum()
    return torch.logsumexp(logits, dim=-1).square().mean()
