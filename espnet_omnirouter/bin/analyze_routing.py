"""Analyse the expert routing of a trained MoE ASR model.

    python -m espnet_omnirouter.bin.analyze_routing \\
        --model exp/asr_omni/asr_model.zip \\
        --data dump/raw/test_clean --data dump/raw/test_other \\
        --out exp/asr_omni/routing_analysis [--compare exp/asr_switch/routing_analysis/summary.json] \\
        [--max_utts 500] [--batch_size 1] [--device cpu]

Writes usage.{png,json}, layer_dependence.{png,json}, segments.{png,json}, sets.{png,json}
(with several --data), summary.md, summary.json and routing/<set>.npz to --out.
"""
import argparse
import logging
import sys
import warnings
from typing import List, Optional


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m espnet_omnirouter.bin.analyze_routing",
        description="Expert usage, layer dependence (Cramer's V, NMI) and temporal segments of a "
        "Switch / Omni-router MoE ASR model's routing.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--model", required=True,
                        help="packed model zip, unpacked pack directory or experiment directory")
    parser.add_argument("--data", required=True, action="append",
                        help="data directory with wav.scp (ESPnet dump/raw layout) or a wav.scp file; "
                        "repeat for several sets (each is named after its directory)")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--compare", default=None,
                        help="another model's summary.json to put beside this one in summary.md")
    parser.add_argument("--max_utts", type=int, default=None, help="first N utterances of each set")
    parser.add_argument("--batch_size", type=int, default=1,
                        help="utterances per forward; 1 reproduces decoding exactly (see record_routing)")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    parser.add_argument("--seed", type=int, default=0, help="seed of the time-shuffled baseline")
    parser.add_argument("--example_utt", default=None, help="utterance drawn in segments.png (None: the longest)")
    parser.add_argument("--label", default=None, help="the model's name in the summary")
    parser.add_argument("--log_level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    parser = get_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for name in ("max_utts", "batch_size"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name} must be >= 1, got {value}")
    warnings.filterwarnings("ignore", category=FutureWarning)
    from espnet_omnirouter.analysis import analyze

    summary = analyze(
        args.model,
        args.data,
        args.out,
        compare=args.compare,
        max_utts=args.max_utts,
        batch_size=args.batch_size,
        device=args.device,
        seed=args.seed,
        example_utt=args.example_utt,
        label=args.label,
    )
    head = summary["headline"]
    logging.info(
        "%d utterances, %d frames: V mean %.3f, NMI mean %.3f, switch rate %.3f (shuffled %.3f); see %s/summary.md",
        head["num_utts"], head["num_frames"], head["cramers_v_mean"] or 0.0, head["nmi_mean"] or 0.0,
        head["switch_rate_mean"], head["switch_rate_shuffled_mean"], args.out,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
