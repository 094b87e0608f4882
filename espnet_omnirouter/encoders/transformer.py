"""Switch, Omni-router and Duo Transformer encoders (ESPnet ``TransformerEncoder`` + MoE FFNs)."""
from espnet2.asr.encoder.transformer_encoder import TransformerEncoder

from espnet_omnirouter.encoders.duo_encoder import DuoEncoderMixin, duo_signature
from espnet_omnirouter.encoders.moe_encoder import MoEEncoderMixin, moe_signature


@moe_signature
class SwitchTransformerEncoder(MoEEncoderMixin, TransformerEncoder):
    """Transformer whose FFNs are top-k MoE FFNs, one router per MoE FFN (``switch_transformer``)."""


@moe_signature
class OmniRouterTransformerEncoder(MoEEncoderMixin, TransformerEncoder):
    """Transformer whose MoE FFNs share one router (``omni_router_transformer``)."""

    shared_router = True


@duo_signature
class DuoTransformerEncoder(DuoEncoderMixin, TransformerEncoder):
    """Transformer whose FFNs are Duo slots: big, small or skip per frame (``duo_transformer``)."""
