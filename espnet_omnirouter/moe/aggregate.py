"""Combine the routing records of several MoE layers into losses and statistics (torch only).

The layers of one forward route the same frames, so their routing tensors are stacked and
each loss or statistic is computed once for all layers (a handful of kernels per step
instead of a handful per layer).
"""
from typing import Callable, Dict, List, Optional, Sequence

import torch

from espnet_omnirouter.moe.layer import LayerRouting
from espnet_omnirouter.moe.losses import load_balance_loss, router_z_loss
from espnet_omnirouter.moe.stats import STAT_NAMES, usage_stats_tensor


def per_layer(fn: Callable[..., torch.Tensor], *columns: Sequence[torch.Tensor]) -> torch.Tensor:
    """``fn`` of each layer's tensors, stacked: ``[L, ...]``.

    Args:
        fn: takes one tensor per column, with or without a leading layer dimension.
        columns: per column, one tensor per layer (``L`` layers).

    One call on the stacked ``[L, ...]`` tensors when every column's tensors have one
    shape (layers of one forward); otherwise one call per layer.
    """
    if all(len({tuple(t.shape) for t in column}) == 1 for column in columns):
        return fn(*(torch.stack(list(column)) for column in columns))
    return torch.stack([fn(*tensors) for tensors in zip(*columns)])


def moe_aux_losses(records: List[Optional[LayerRouting]]) -> Dict[str, torch.Tensor]:
    """Mean over the layers that ran of the load-balance and z-losses.

    Args:
        records: one entry per MoE layer, None for a layer skipped this forward.

    Returns:
        ``{"lb": scalar, "z": scalar}`` float32; zeros when no layer ran.
    """
    ran = [r.routing for r in records if r is not None]
    if not ran:
        zero = torch.zeros(())
        return {"lb": zero, "z": zero}
    lb = per_layer(load_balance_loss, [r.probs for r in ran], [r.expert for r in ran]).mean()
    z = per_layer(router_z_loss, [r.logits for r in ran]).mean()
    return {"lb": lb, "z": z}


def moe_layer_stats(records: List[Optional[LayerRouting]]) -> Dict[str, torch.Tensor]:
    """Per-layer usage statistics, keyed ``moe{i}_{entropy,max_frac,drop_frac}``.

    The keys depend only on the number of layers, never on the data, so that DDP can
    gather them in order; a layer skipped this forward (stochastic depth) reports zeros.
    """
    ran = [r for r in records if r is not None]
    if ran:
        num_experts = ran[0].routing.probs.shape[1]
        values = iter(
            per_layer(
                lambda expert, dropped: usage_stats_tensor(expert, dropped, num_experts),
                [r.routing.expert for r in ran],
                [r.dropped for r in ran],
            )
        )
    out = {}
    for i, record in enumerate(records):
        row = torch.zeros(len(STAT_NAMES)) if record is None else next(values)
        for name, value in zip(STAT_NAMES, row.unbind(0)):
            out[f"moe{i}_{name}"] = value
    return out
