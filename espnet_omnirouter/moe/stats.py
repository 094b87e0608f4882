"""Expert-usage statistics of MoE routing (torch only)."""
from typing import Dict

import torch

from espnet_omnirouter.moe.layer import LayerRouting
from espnet_omnirouter.moe.losses import expert_fractions

STAT_NAMES = ("entropy", "max_frac", "drop_frac")


def usage_stats_tensor(expert: torch.Tensor, dropped: torch.Tensor, num_experts: int) -> torch.Tensor:
    """The statistics of :func:`usage_stats`, stacked in the order of ``STAT_NAMES``.

    Args:
        expert: ``[..., N, k]`` chosen experts of the non-padded frames.
        dropped: ``[...]`` int64 assignments dropped by the capacity.
        num_experts: ``E``.

    Returns:
        ``[..., 3]`` float32, detached.
    """
    expert = expert.detach()
    frac = expert_fractions(expert[..., 0], num_experts)
    entropy = -(frac * frac.clamp_min(1e-12).log()).sum(-1)
    num_assign = max(expert.shape[-2] * expert.shape[-1], 1)
    return torch.stack([entropy, frac.amax(-1), dropped.to(frac.dtype) / num_assign], dim=-1)


def usage_stats(record: LayerRouting) -> Dict[str, torch.Tensor]:
    """Scalar statistics of one forward's routing over its non-padded frames.

    Returns (all detached float32 scalars):
        ``entropy``: entropy (nats) of the first-choice usage distribution;
            ``log(E)`` for perfectly even use, 0 for one expert.
        ``max_frac``: the largest fraction of frames whose first choice is one expert.
        ``drop_frac``: fraction of (frame, choice) assignments dropped by the capacity.
    """
    values = usage_stats_tensor(record.routing.expert, record.dropped, record.routing.probs.shape[1])
    return dict(zip(STAT_NAMES, values.unbind(-1)))
