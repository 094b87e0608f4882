"""Inference extensions: RoE hyper-parallel inference, Duo decoding policies."""
from espnet_omnirouter.inference.duo import DuoDecodeConfig, apply_duo_policy
from espnet_omnirouter.inference.roe import RoEConfig, RoEEncoder, average_log_posteriors, ctc_greedy

__all__ = ["DuoDecodeConfig", "RoEConfig", "RoEEncoder", "apply_duo_policy", "average_log_posteriors", "ctc_greedy"]
