"""Expert-usage statistics of one MoE layer's routing (torch only)."""
from typing import Dict

import torch

from espnet_omnirouter.moe.layer import LayerRouting


def usage_stats(record: LayerRouting) -> Dict[str, torch.Tensor]:
    """Scalar statistics of one forward's routing over its non-padded frames.

    Returns (all detached float32 scalars):
        ``entropy``: entropy (nats) of the first-choice usage distribution;
            ``log(E)`` for perfectly even use, 0 for one expert.
        ``max_frac``: the largest fraction of frames whose first choice is one expert.
        ``drop_frac``: fraction of (frame, choice) assignments dropped by the capacity.
    """
    expert = record.routing.expert.detach()
    num_experts = record.routing.probs.shape[1]
    num_assign = max(expert.numel(), 1)
    frac = torch.bincount(expert[:, 0], minlength=num_experts).float() / max(expert.shape[0], 1)
    entropy = -(frac * frac.clamp_min(1e-12).log()).sum()
    return {
        "entropy": entropy,
        "max_frac": frac.max(),
        "drop_frac": record.dropped.float() / num_assign,
    }
