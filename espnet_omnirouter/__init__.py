"""Switch and Omni-router Mixture-of-Experts encoders for ESPnet ASR.

Importing the package registers ``switch_conformer``, ``omni_router_conformer``,
``switch_transformer``, ``omni_router_transformer`` (encoders) and ``moe_espnet`` (model)
in ``espnet2.tasks.asr``.
"""
from espnet_omnirouter.registry import register

register()

__version__ = "0.1.0"
