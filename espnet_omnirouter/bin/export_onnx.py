"""Export an ASR model (ours: Switch, Omni-router, Duo; or ESPnet's dense ones) to ONNX.

    python -m espnet_omnirouter.bin.export_onnx --model exp/asr_omni/asr_model.zip --out exp/asr_omni/onnx \\
        [--duo_policy static --duo_pattern BSKBSKBSKBSK] [--opset 18]

Writes frontend.onnx, encoder.onnx, ctc.onnx, decoder.onnx and config.yaml to --out
(``espnet_omnirouter.export.model``); decode them without PyTorch:

    from espnet_omnirouter_onnx import Speech2Text
    text = Speech2Text("exp/asr_omni/onnx", beam_size=5, ctc_weight=0.3)(waveform)[0][0]

A model or option that cannot be exported (a streaming encoder, a transducer, a Duo random
policy, ...) is refused with its YAML key named, and nothing is written.
"""
import argparse
import logging
import sys
import warnings
from typing import List, Optional

from espnet_omnirouter.export.encoder import OPSET


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m espnet_omnirouter.bin.export_onnx",
        description="Export an ESPnet ASR model (MoE, Omni-router, Duo or dense) to ONNX graphs that "
        "espnet_omnirouter_onnx.Speech2Text decodes with onnxruntime.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--model", required=True,
                        help="packed model zip, unpacked pack directory, experiment directory or Hugging Face id")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--opset", type=int, default=OPSET, help="ONNX opset")
    parser.add_argument("--cache_dir", default=None, help="where a zip is unpacked (default: the hub's cache)")
    parser.add_argument("--duo_policy", default=None, choices=["big", "small", "static", "learned"],
                        help="Duo encoders: the decoding policy the graph computes (default: the model's)")
    parser.add_argument("--duo_pattern", default=None, help="Duo static policy: B/S/K per slot, e.g. BSKB")
    parser.add_argument("--duo_cost_bias", type=float, default=0.0, help="Duo learned policy: cost bias")
    parser.add_argument("--log_level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = get_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    warnings.filterwarnings("ignore", category=FutureWarning)
    for name in ("onnx_ir", "onnxscript"):  # their INFO lines name every graph pass
        logging.getLogger(name).setLevel(max(logging.WARNING, logging.getLogger().level))
    from espnet_omnirouter.encoders.duo_encoder import DuoEncoderMixin
    from espnet_omnirouter.export.model import export_asr_model
    from espnet_omnirouter.hub import load_asr_model
    from espnet_omnirouter.inference.duo import DuoDecodeConfig, apply_duo_policy

    try:
        duo = DuoDecodeConfig(policy=args.duo_policy, pattern=args.duo_pattern, cost_bias=args.duo_cost_bias)
        asr_model, train_args = load_asr_model(args.model, args.cache_dir)
        duo_policy = None
        if isinstance(asr_model.encoder, DuoEncoderMixin):
            apply_duo_policy(asr_model.encoder, duo)
            duo_policy = {"policy": duo.policy, "pattern": duo.pattern, "cost_bias": duo.cost_bias, "tag": duo.tag()}
        elif args.duo_policy is not None:
            raise ValueError(f"--duo_policy: {type(asr_model.encoder).__name__} is not a Duo encoder")
        config = export_asr_model(asr_model, train_args, args.out, args.opset, duo_policy=duo_policy,
                                  source={"model": str(args.model)})
    except (ValueError, FileNotFoundError) as e:
        logging.error("%s", e)
        return 2
    logging.info("wrote %s", config)
    return 0


if __name__ == "__main__":
    sys.exit(main())
