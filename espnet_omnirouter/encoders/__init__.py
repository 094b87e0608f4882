"""ESPnet encoder adapters for the MoE core."""
from espnet_omnirouter.encoders.conformer import (
    DuoConformerEncoder,
    OmniRouterConformerEncoder,
    SwitchConformerEncoder,
)
from espnet_omnirouter.encoders.contextual_block import (
    OmniRouterContextualBlockConformerEncoder,
    OmniRouterContextualBlockTransformerEncoder,
    SwitchContextualBlockConformerEncoder,
    SwitchContextualBlockTransformerEncoder,
)
from espnet_omnirouter.encoders.duo_encoder import DuoEncoderMixin
from espnet_omnirouter.encoders.e_branchformer import (
    DuoEBranchformerEncoder,
    OmniRouterEBranchformerEncoder,
    SwitchEBranchformerEncoder,
)
from espnet_omnirouter.encoders.moe_encoder import MoEEncoderMixin
from espnet_omnirouter.encoders.transformer import (
    DuoTransformerEncoder,
    OmniRouterTransformerEncoder,
    SwitchTransformerEncoder,
)

__all__ = [
    "DuoConformerEncoder",
    "DuoEBranchformerEncoder",
    "DuoEncoderMixin",
    "DuoTransformerEncoder",
    "MoEEncoderMixin",
    "OmniRouterConformerEncoder",
    "OmniRouterContextualBlockConformerEncoder",
    "OmniRouterContextualBlockTransformerEncoder",
    "OmniRouterEBranchformerEncoder",
    "OmniRouterTransformerEncoder",
    "SwitchConformerEncoder",
    "SwitchContextualBlockConformerEncoder",
    "SwitchContextualBlockTransformerEncoder",
    "SwitchEBranchformerEncoder",
    "SwitchTransformerEncoder",
]
