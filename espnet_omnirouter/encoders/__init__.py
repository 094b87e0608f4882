"""ESPnet encoder adapters for the MoE core."""
from espnet_omnirouter.encoders.conformer import OmniRouterConformerEncoder, SwitchConformerEncoder
from espnet_omnirouter.encoders.moe_encoder import MoEEncoderMixin
from espnet_omnirouter.encoders.transformer import (
    OmniRouterTransformerEncoder,
    SwitchTransformerEncoder,
)

__all__ = [
    "MoEEncoderMixin",
    "OmniRouterConformerEncoder",
    "OmniRouterTransformerEncoder",
    "SwitchConformerEncoder",
    "SwitchTransformerEncoder",
]
