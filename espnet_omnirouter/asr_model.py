"""``moe_espnet``: ESPnet's ASR model plus the MoE auxiliary losses and routing statistics."""
import inspect
from typing import Optional

import torch
from espnet2.asr.espnet_model import ESPnetASRModel
from espnet2.torch_utils.device_funcs import force_gatherable

from espnet_omnirouter.config_check import check_known_keys, typechecked_conf
from espnet_omnirouter.encoders.duo_encoder import DuoEncoderMixin
from espnet_omnirouter.encoders.moe_encoder import MoEEncoderMixin
from espnet_omnirouter.moe import budget_loss, duo_stats, moe_aux_losses, moe_layer_stats
from espnet_omnirouter.signature import publish_signature


class MoEASRModel(ESPnetASRModel):
    """``loss = asr_loss + sum over MoE FFNs of (moe_aux_weight * load_balance + moe_zloss_weight * z_loss)``.

    As in Switch Transformer, the weights apply to each MoE FFN's losses, summed over the
    FFNs.  ``stats`` reports the means over the FFNs (load balance 1.0 = even use) and gains
    ``loss_asr`` (the loss without them), ``moe_lb_loss``, ``moe_z_loss`` and, per MoE FFN
    ``i`` in execution order, ``moe{i}_entropy`` (nats), ``moe{i}_max_frac`` and
    ``moe{i}_drop_frac``; ``loss`` is the total.  With a dense encoder it is ESPnet's model.

    With a Duo encoder (``duo_*``) there is no load-balance or z-loss; instead, when the slots
    route with their routers (``duo_routing: learned``) and ``duo_budget`` is set,
    ``loss = asr_loss + duo_budget_weight * (expected compute - duo_budget) ** 2``, the
    expected compute being the mean over slots and non-padded frames of
    ``sum_p prob_p * cost_p`` relative to all-big.  ``stats`` gains ``duo_compute`` (the
    compute of the paths taken), ``duo_budget_loss`` and ``duo{i}_{big,small,skip}``.

    Args:
        moe_aux_weight: weight of the load-balancing loss (>= 0).
        moe_zloss_weight: weight of the router z-loss (>= 0).
        duo_budget: Duo: target compute ``b`` in [0, 1] of the learned routers (null: no budget loss).
        duo_budget_weight: Duo: weight of the budget loss (>= 0).
        duo_freeze_backbone: Duo: train only the routers (Duo-LLM's stage 2): every other
            parameter is frozen and batch-norm statistics are kept (batch norm stays in eval mode).
        *args, **kwargs: ESPnetASRModel's arguments.

    Both weights are type-checked (the error names ``model_conf.<key>``), and a key that
    neither we nor ``ESPnetASRModel`` take is rejected with the closest valid key.
    """

    @typechecked_conf("model_conf")
    def __init__(
        self,
        *args,
        moe_aux_weight: float = 0.01,
        moe_zloss_weight: float = 0.001,
        duo_budget: Optional[float] = None,
        duo_budget_weight: float = 10.0,
        duo_freeze_backbone: bool = False,
        **kwargs,
    ):
        check_known_keys("model_conf", type(self), kwargs)
        for key, value in (
            ("moe_aux_weight", moe_aux_weight),
            ("moe_zloss_weight", moe_zloss_weight),
            ("duo_budget_weight", duo_budget_weight),
        ):
            if value < 0:
                raise ValueError(f"model_conf.{key} must be >= 0, got {value}")
        if duo_budget is not None and not 0.0 <= duo_budget <= 1.0:
            raise ValueError(f"model_conf.duo_budget must be in [0, 1] (compute relative to all-big), got {duo_budget}")
        super().__init__(*args, **kwargs)
        is_duo = isinstance(self.encoder, DuoEncoderMixin)
        for key, value in (("duo_budget", duo_budget is not None), ("duo_freeze_backbone", duo_freeze_backbone)):
            if value and not is_duo:
                raise ValueError(f"model_conf.{key} is for duo_* encoders; the encoder is {type(self.encoder).__name__}")
        if is_duo and (duo_budget is not None or duo_freeze_backbone) and self.encoder.duo_routing != "learned":
            raise ValueError(
                "model_conf.duo_budget and duo_freeze_backbone train the routers: they need "
                "encoder_conf.duo_routing: learned"
            )
        self.moe_aux_weight = moe_aux_weight
        self.moe_zloss_weight = moe_zloss_weight
        self.duo_budget = duo_budget
        self.duo_budget_weight = duo_budget_weight
        self.duo_freeze_backbone = duo_freeze_backbone
        if duo_freeze_backbone:
            routers = {id(p) for p in self.encoder.duo_router_parameters()}
            for p in self.parameters():
                if id(p) not in routers:
                    p.requires_grad_(False)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.duo_freeze_backbone:
            # A frozen backbone keeps its batch-norm statistics too.
            for m in self.modules():
                if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self

    def forward(self, speech, speech_lengths, text, text_lengths, **kwargs):
        loss, stats, weight = super().forward(speech, speech_lengths, text, text_lengths, **kwargs)
        if isinstance(self.encoder, DuoEncoderMixin):
            return self._add_duo(loss, stats, weight)
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

    def _add_duo(self, loss, stats, weight):
        records = self.encoder.duo_records()
        costs = self.encoder.duo_costs()
        total = loss
        learned = any(s.policy.kind == "learned" for s in self.encoder.duo_slots())
        if self.duo_budget is not None and learned:
            budget = budget_loss(records, costs, self.duo_budget)
            total = loss + self.duo_budget_weight * budget.to(loss)
            stats["duo_budget_loss"] = budget.detach()
        stats["loss_asr"] = loss.detach()
        stats.update(duo_stats(records, costs))
        stats["loss"] = total.detach()
        return force_gatherable((total, stats, weight), total.device)


_own = [
    p
    for n, p in inspect.signature(MoEASRModel.__init__).parameters.items()
    if n in ("moe_aux_weight", "moe_zloss_weight", "duo_budget", "duo_budget_weight", "duo_freeze_backbone")
]
publish_signature(MoEASRModel, ESPnetASRModel, _own)
