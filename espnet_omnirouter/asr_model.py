"""``moe_espnet``: ESPnet's ASR model plus the MoE auxiliary losses and routing statistics."""
import inspect

import torch
from espnet2.asr.espnet_model import ESPnetASRModel
from espnet2.torch_utils.device_funcs import force_gatherable

from espnet_omnirouter.config_check import check_known_keys, typechecked_conf
from espnet_omnirouter.encoders.moe_encoder import MoEEncoderMixin
from espnet_omnirouter.moe import moe_aux_losses, moe_layer_stats
from espnet_omnirouter.signature import publish_signature


class MoEASRModel(ESPnetASRModel):
    """``loss = asr_loss + sum over MoE FFNs of (moe_aux_weight * load_balance + moe_zloss_weight * z_loss)``.

    As in Switch Transformer, the weights apply to each MoE FFN's losses, summed over the
    FFNs.  ``stats`` reports the means over the FFNs (load balance 1.0 = even use) and gains
    ``loss_asr`` (the loss without them), ``moe_lb_loss``, ``moe_z_loss`` and, per MoE FFN
    ``i`` in execution order, ``moe{i}_entropy`` (nats), ``moe{i}_max_frac`` and
    ``moe{i}_drop_frac``; ``loss`` is the total.  With a dense encoder it is ESPnet's model.

    Args:
        moe_aux_weight: weight of the load-balancing loss (>= 0).
        moe_zloss_weight: weight of the router z-loss (>= 0).
        *args, **kwargs: ESPnetASRModel's arguments.

    Both weights are type-checked (the error names ``model_conf.<key>``), and a key that
    neither we nor ``ESPnetASRModel`` take is rejected with the closest valid key.
    """

    @typechecked_conf("model_conf")
    def __init__(self, *args, moe_aux_weight: float = 0.01, moe_zloss_weight: float = 0.001, **kwargs):
        check_known_keys("model_conf", type(self), kwargs)
        for key, value in (("moe_aux_weight", moe_aux_weight), ("moe_zloss_weight", moe_zloss_weight)):
            if value < 0:
                raise ValueError(f"model_conf.{key} must be >= 0, got {value}")
        super().__init__(*args, **kwargs)
        self.moe_aux_weight = moe_aux_weight
        self.moe_zloss_weight = moe_zloss_weight

    def forward(self, speech, speech_lengths, text, text_lengths, **kwargs):
        loss, stats, weight = super().forward(speech, speech_lengths, text, text_lengths, **kwargs)
        if not isinstance(self.encoder, MoEEncoderMixin):
            return loss, stats, weight
        records = self.encoder.moe_records()
        aux = moe_aux_losses(records)
        ran = sum(r is not None for r in records)  # mean * ran = sum over the FFNs that ran
        total = loss + ran * (self.moe_aux_weight * aux["lb"].to(loss) + self.moe_zloss_weight * aux["z"].to(loss))
        stats["loss_asr"] = loss.detach()
        stats["moe_lb_loss"] = aux["lb"].detach()
        stats["moe_z_loss"] = aux["z"].detach()
        stats.update(moe_layer_stats(records))
        stats["loss"] = total.detach()
        return force_gatherable((total, stats, weight), total.device)


_own = [
    p
    for n, p in inspect.signature(MoEASRModel.__init__).parameters.items()
    if n in ("moe_aux_weight", "moe_zloss_weight")
]
publish_signature(MoEASRModel, ESPnetASRModel, _own)
