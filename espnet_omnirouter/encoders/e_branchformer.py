"""Switch, Omni-router and Duo E-Branchformer encoders (ESPnet ``EBranchformerEncoder`` + MoE FFNs).

The E-Branchformer block (attention and cgMLP branches, merged) has FFNs only with
``use_ffn: true`` (ESPnet's default is false): ``feed_forward`` after the merge and, with
``macaron_ffn: true``, ``feed_forward_macaron`` before the branches, as ESPnet's LibriSpeech
recipes configure it.  Those FFNs become MoE FFNs or Duo slots; the branches stay dense.
"""
from espnet2.asr.encoder.e_branchformer_encoder import EBranchformerEncoder

from espnet_omnirouter.encoders.duo_encoder import DuoEncoderMixin, duo_signature
from espnet_omnirouter.encoders.moe_encoder import FFNSlotsMixin, MoEEncoderMixin, moe_signature


class _EBranchformerFFNs(FFNSlotsMixin):
    """Refuse an E-Branchformer configuration without FFNs before it is built."""

    @classmethod
    def check_family_conf(cls, conf: dict) -> None:
        if not conf.get("use_ffn", False):
            raise ValueError(
                f"encoder_conf.use_ffn must be true for {cls.__name__} (ESPnet's default is false, which "
                "gives the E-Branchformer blocks no feed-forward module to convert); set use_ffn: true "
                "(and macaron_ffn: true for the macaron FFN too)"
            )


@moe_signature
class SwitchEBranchformerEncoder(_EBranchformerFFNs, MoEEncoderMixin, EBranchformerEncoder):
    """E-Branchformer whose FFNs are top-k MoE FFNs, one router per MoE FFN (``switch_e_branchformer``)."""


@moe_signature
class OmniRouterEBranchformerEncoder(_EBranchformerFFNs, MoEEncoderMixin, EBranchformerEncoder):
    """E-Branchformer whose MoE FFNs share one router (``omni_router_e_branchformer``)."""

    shared_router = True


@duo_signature
class DuoEBranchformerEncoder(_EBranchformerFFNs, DuoEncoderMixin, EBranchformerEncoder):
    """E-Branchformer whose FFNs are Duo slots: big, small or skip per frame (``duo_e_branchformer``)."""
