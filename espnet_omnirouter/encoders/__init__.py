"""ESPnet encoder adapters for the MoE core."""
from espnet_omnirouter.encoders.conformer import (
    DuoConformerEncoder,
    OmniRouterConformerEncoder,
    SwitchConformerEncoder,
)
from espnet_omnirouter.encoders.duo_encoder import DuoEncoderMixin
from espnet_omnirouter.encoders.moe_encoder import MoEEncoderMixin
from espnet_omnirouter.encoders.transformer import (
    DuoTransformerEncoder,
    OmniRouterTransformerEncoder,
    SwitchTransformerEncoder,
)

__all__ = [
    "DuoConformerEncoder",
    "DuoEncoderMixin",
    "DuoTransformerEncoder",
    "MoEEncoderMixin",
    "OmniRouterConformerEncoder",
    "OmniRouterTransformerEncoder",
    "SwitchConformerEncoder",
    "SwitchTransformerEncoder",
]
