"""ESPnet's ``asr_inference`` with the plugin registered and RoE options.

Every option of ``espnet2.bin.asr_inference`` works unchanged; ``--roe_samples K`` (K > 1)
turns on RoE hyper-parallel inference (see ``espnet_omnirouter.inference.roe``); the
``--duo_*`` options choose the decoding policy of Duo encoders
(``espnet_omnirouter.inference.duo``).  The
options can also be keys of the ``--config`` decode YAML.  They are checked (type and range,
see ``RoEConfig``) before the model loads; a bad one ends in an argparse error naming it.
"""
import sys

import espnet_omnirouter  # noqa: F401  (registers the encoders and model)
from espnet2.bin import asr_inference
from espnet2.utils.types import str2bool
from espnet.utils.cli_utils import get_commandline_args

from espnet_omnirouter.inference.duo import POLICIES, DuoDecodeConfig
from espnet_omnirouter.inference.roe import RoEConfig
from espnet_omnirouter.inference.speech2text import espnet_speech2text_class, roe_speech2text_class


def _tau(value: str):
    """``0.5`` or a comma-separated list, one per MoE FFN: ``0,0.5,0.5,0``."""
    parts = [float(v) for v in str(value).split(",")]
    return parts[0] if len(parts) == 1 else parts


def _floats(value):
    """``0.5,0.25,0.25`` (or a YAML list) -> a list of floats."""
    return [float(v) for v in (value if isinstance(value, (list, tuple)) else str(value).split(","))]


def get_parser():
    parser = asr_inference.get_parser()
    group = parser.add_argument_group("RoE (Roster of Experts) hyper-parallel inference")
    group.add_argument("--roe_samples", type=int, default=1, help="K noisy encoder copies; 1 = off")
    group.add_argument("--roe_tau", type=_tau, default=1.0, help="Gumbel temperature (or one per MoE FFN, comma-separated)")
    group.add_argument("--roe_clean_layers", type=int, default=1, help="first and last MoE FFNs kept noise-free")
    group.add_argument("--roe_aggregate", choices=["prob", "logprob"], default="prob")
    group.add_argument("--roe_shared_noise", type=str2bool, default=False, help="one noise draw per frame for all layers")
    group.add_argument("--roe_seed", type=int, default=0)
    group = parser.add_argument_group("Duo adaptive compute (duo_* encoders)")
    group.add_argument("--duo_policy", choices=list(POLICIES), default=None,
                       help="path choice of the slots; default: learned for a stage-2 model, big for stage 1")
    group.add_argument("--duo_pattern", default=None, help="static: one letter per slot, B big, S small, K skip")
    group.add_argument("--duo_probs", type=_floats, default=None, help="random: big,small,skip probabilities")
    group.add_argument("--duo_cost_bias", type=float, default=0.0, help="learned: logit shift per unit cost (>0 = less compute)")
    group.add_argument("--duo_seed", type=int, default=0, help="random: seed of the path draws")
    return parser


def main(cmd=None):
    print(get_commandline_args(), file=sys.stderr)
    parser = get_parser()
    args = parser.parse_args(cmd)
    kwargs = vars(args)
    kwargs.pop("config", None)
    roe = {key: kwargs.pop(key) for key in list(kwargs) if key.startswith(("roe_", "duo_"))}
    try:  # before the model loads: also the values of a --config YAML, which argparse does not check
        RoEConfig(**{key[len("roe_"):]: value for key, value in roe.items() if key.startswith("roe_")})
        DuoDecodeConfig(**{key[len("duo_"):]: value for key, value in roe.items() if key.startswith("duo_")})
    except (TypeError, ValueError) as e:
        parser.error(str(e))
    with espnet_speech2text_class(roe_speech2text_class(**roe)):
        asr_inference.inference(**kwargs)


if __name__ == "__main__":
    main()
