"""Switch and Omni-router Transformer encoders (ESPnet ``TransformerEncoder`` + MoE FFNs)."""
from espnet2.asr.encoder.transformer_encoder import TransformerEncoder

from espnet_omnirouter.encoders.moe_encoder import MoEEncoderMixin, moe_signature


@moe_signature
class SwitchTransformerEncoder(MoEEncoderMixin, TransformerEncoder):
    """Transformer whose FFNs are top-k MoE FFNs, one router per MoE FFN (``switch_transformer``)."""


@moe_signature
class OmniRouterTransformerEncoder(MoEEncoderMixin, TransformerEncoder):
    """Transformer whose MoE FFNs share one router (``omni_router_transformer``)."""

    shared_router = True
