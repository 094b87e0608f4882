"""Register the plugin's classes in ESPnet's ASR task (idempotent)."""
from espnet2.tasks import asr as asr_task

from espnet_omnirouter.asr_model import MoEASRModel
from espnet_omnirouter import encoders as enc

ENCODERS = {
    "switch_conformer": enc.SwitchConformerEncoder,
    "omni_router_conformer": enc.OmniRouterConformerEncoder,
    "switch_transformer": enc.SwitchTransformerEncoder,
    "omni_router_transformer": enc.OmniRouterTransformerEncoder,
    "duo_conformer": enc.DuoConformerEncoder,
    "duo_transformer": enc.DuoTransformerEncoder,
    "switch_e_branchformer": enc.SwitchEBranchformerEncoder,
    "omni_router_e_branchformer": enc.OmniRouterEBranchformerEncoder,
    "duo_e_branchformer": enc.DuoEBranchformerEncoder,
    "switch_contextual_block_conformer": enc.SwitchContextualBlockConformerEncoder,
    "omni_router_contextual_block_conformer": enc.OmniRouterContextualBlockConformerEncoder,
    "switch_contextual_block_transformer": enc.SwitchContextualBlockTransformerEncoder,
    "omni_router_contextual_block_transformer": enc.OmniRouterContextualBlockTransformerEncoder,
}
MODELS = {"moe_espnet": MoEASRModel}


def register() -> None:
    """Add our encoders and model to ``espnet2.tasks.asr``'s class choices.

    Must run before an ASR argument parser is built or a model is loaded.
    """
    asr_task.encoder_choices.classes.update(ENCODERS)
    asr_task.model_choices.classes.update(MODELS)
