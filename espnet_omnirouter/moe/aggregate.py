"""Combine the routing records of several MoE layers into losses and statistics (torch only)."""
from typing import Dict, List, Optional

import torch

from espnet_omnirouter.moe.layer import LayerRouting
from espnet_omnirouter.moe.losses import load_balance_loss, router_z_loss
from espnet_omnirouter.moe.stats import usage_stats


def moe_aux_losses(records: List[Optional[LayerRouting]]) -> Dict[str, torch.Tensor]:
    """Mean over the layers that ran of the load-balance and z-losses.

    Args:
        records: one entry per MoE layer, None for a layer skipped this forward.

    Returns:
        ``{"lb": scalar, "z": scalar}`` float32; zeros when no layer ran.
    """
    ran = [r for r in records if r is not None]
    if not ran:
        zero = torch.zeros(())
        return {"lb": zero, "z": zero}
    lb = torch.stack([load_balance_loss(r.routing.probs, r.routing.expert) for r in ran]).mean()
    z = torch.stack([router_z_loss(r.routing.logits) for r in ran]).mean()
    return {"lb": lb, "z": z}


def moe_layer_stats(records: List[Optional[LayerRouting]]) -> Dict[str, torch.Tensor]:
    """Per-layer usage statistics, keyed ``moe{i}_{entropy,max_frac,drop_frac}``.

    The keys depend only on the number of layers, never on the data, so that DDP can
    gather them in order; a layer skipped this forward (stochastic depth) reports zeros.
    """
    out = {}
    for i, record in enumerate(records):
        if record is None:
            stats = {"entropy": 0.0, "max_frac": 0.0, "drop_frac": 0.0}
        else:
            stats = usage_stats(record)
        for name, value in stats.items():
            out[f"moe{i}_{name}"] = torch.as_tensor(value, dtype=torch.float32)
    return out
