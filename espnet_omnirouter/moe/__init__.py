"""Mixture-of-Experts core: depends on torch only."""
from espnet_omnirouter.moe.aggregate import moe_aux_losses, moe_layer_stats
from espnet_omnirouter.moe.duo import PATHS, DuoFeedForward, DuoPolicy, budget_loss, duo_stats
from espnet_omnirouter.moe.experts import Experts
from espnet_omnirouter.moe.layer import LayerRouting, MoEFeedForward, Padding
from espnet_omnirouter.moe.paths import PathExperts
from espnet_omnirouter.moe.losses import load_balance_loss, router_z_loss
from espnet_omnirouter.moe.router import Router, Routing
from espnet_omnirouter.moe.stats import usage_stats

__all__ = [
    "PATHS",
    "DuoFeedForward",
    "DuoPolicy",
    "PathExperts",
    "budget_loss",
    "duo_stats",
    "Experts",
    "LayerRouting",
    "MoEFeedForward",
    "Padding",
    "Router",
    "Routing",
    "load_balance_loss",
    "moe_aux_losses",
    "moe_layer_stats",
    "router_z_loss",
    "usage_stats",
]
