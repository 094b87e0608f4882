"""Switch, Omni-router and Duo Conformer encoders (ESPnet ``ConformerEncoder`` + MoE FFNs)."""
from espnet2.asr.encoder.conformer_encoder import ConformerEncoder

from espnet_omnirouter.encoders.duo_encoder import DuoEncoderMixin, duo_signature
from espnet_omnirouter.encoders.moe_encoder import MoEEncoderMixin, moe_signature


@moe_signature
class SwitchConformerEncoder(MoEEncoderMixin, ConformerEncoder):
    """Conformer whose FFNs are top-k MoE FFNs, one router per MoE FFN (``switch_conformer``)."""


@moe_signature
class OmniRouterConformerEncoder(MoEEncoderMixin, ConformerEncoder):
    """Conformer whose MoE FFNs share one router (``omni_router_conformer``)."""

    shared_router = True


@duo_signature
class DuoConformerEncoder(DuoEncoderMixin, ConformerEncoder):
    """Conformer whose FFNs are Duo slots: big, small or skip per frame (``duo_conformer``)."""
