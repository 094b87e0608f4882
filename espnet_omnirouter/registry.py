"""Register the plugin's classes in ESPnet's ASR task (idempotent)."""
from espnet2.tasks import asr as asr_task

from espnet_omnirouter.asr_model import MoEASRModel
from espnet_omnirouter.encoders import (
    DuoConformerEncoder,
    DuoTransformerEncoder,
    OmniRouterConformerEncoder,
    OmniRouterTransformerEncoder,
    SwitchConformerEncoder,
    SwitchTransformerEncoder,
)

ENCODERS = {
    "switch_conformer": SwitchConformerEncoder,
    "omni_router_conformer": OmniRouterConformerEncoder,
    "switch_transformer": SwitchTransformerEncoder,
    "omni_router_transformer": OmniRouterTransformerEncoder,
    "duo_conformer": DuoConformerEncoder,
    "duo_transformer": DuoTransformerEncoder,
}
MODELS = {"moe_espnet": MoEASRModel}


def register() -> None:
    """Add our encoders and model to ``espnet2.tasks.asr``'s class choices.

    Must run before an ASR argument parser is built or a model is loaded.
    """
    asr_task.encoder_choices.classes.update(ENCODERS)
    asr_task.model_choices.classes.update(MODELS)
