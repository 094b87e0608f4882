"""Switch and Omni-router Conformer encoders (ESPnet ``ConformerEncoder`` + MoE FFNs)."""
from espnet2.asr.encoder.conformer_encoder import ConformerEncoder

from espnet_omnirouter.encoders.moe_encoder import MoEEncoderMixin, moe_signature


@moe_signature
class SwitchConformerEncoder(MoEEncoderMixin, ConformerEncoder):
    """Conformer whose FFNs are top-k MoE FFNs, one router per MoE FFN (``switch_conformer``)."""


@moe_signature
class OmniRouterConformerEncoder(MoEEncoderMixin, ConformerEncoder):
    """Conformer whose MoE FFNs share one router (``omni_router_conformer``)."""

    shared_router = True
