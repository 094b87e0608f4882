"""Inference extensions: RoE hyper-parallel inference."""
from espnet_omnirouter.inference.roe import RoEConfig, RoEEncoder, average_log_posteriors, ctc_greedy

__all__ = ["RoEConfig", "RoEEncoder", "average_log_posteriors", "ctc_greedy"]
