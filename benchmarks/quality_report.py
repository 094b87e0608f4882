#!/usr/bin/env python3
"""Report of the quality benchmark (benchmarks/quality.sh): dense vs Switch vs Omni-router.

Reads, for every seed and model, the experiment dir ``<root>/seed<S>/asr_<model>/`` that the recipe
(egs2/TEMPLATE/asr1/asr.sh) wrote, and nothing else:

  * ``<decode tag>/<set>/score_{wer,cer}/summary.json``  per-set WER and CER (stage 7)
  * ``train.log`` (and earlier ``train.log.<time>`` kept by quality.sh when a training resumed):
    ESPnet's ``Nepoch results: [train] ... [valid] ...`` lines -> loss curves, final values and the
    training time (sum of the per-epoch ``time=`` of train and valid), and the ESPnet log
    timestamps -> the span of each log
  * ``params.json``: parameter counts (written by ``quality_report.py --count_params <exp>``, which
    quality.sh runs after training; computed on the fly from ``config.yaml`` when missing)
  * ``routing_analysis/summary.json`` (stage 10, MoE models only)

and writes ``<out>/<name>.md``, ``<out>/<name>.json`` and ``<out>/<name>_loss.png`` (``--name``,
default ``quality``).  Every number in them comes from those files, or, for the models of
``--reuse_models``, from the JSON of an earlier report (``--reuse``, named in the report); the verdict
sentences are generated from the numbers.  A difference is called larger or not than the seed
spread (the larger of the two models' standard deviations); a one-seed report takes that spread
from an earlier report of the same models with several seeds (``--spread_from``, named in it).

Conventions: WER/CER in percent as scored by stage 7.  The out-of-domain (OOD) average is the
unweighted mean of the per-set values over the OOD sets; "OOD pooled" divides the summed errors by
the summed reference words (or characters) of those sets.  With several seeds, values are means
and the spread is the sample standard deviation (n - 1) over seeds; relative changes compare the
means: ``100 * (model - reference) / reference``, negative = fewer errors.

    quality_report.py --root exp --models dense switch omni --seeds 1 2 3 --out benchmarks/results
    quality_report.py --root exp --models omni_per_position --seeds 0 1 --name quality_x \\
        --reuse benchmarks/results/quality.json --reuse_models switch omni
    quality_report.py --root exp --models switch omni --seeds 0 --name quality_y \\
        --spread_from benchmarks/results/quality_transformer_ctc.json
    quality_report.py --root exp --models dense omni --name quality_streaming \
        --streaming_tag decode_asr_streaming      (benchmarks/quality_streaming.py)
    quality_report.py --count_params exp/seed1/asr_omni

Code: this file collects the runs and writes the files; ``quality_runs.py`` reads one run,
``quality_stats.py`` summarises over seeds and writes the verdict sentences, ``quality_markdown.py``
makes the report and the loss plot, ``quality_streaming.py`` the streaming comparison.
"""

import argparse
import json
import os
import re
import sys
from typing import Dict, Optional, Sequence

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _report import checkout_relative  # noqa: E402
from quality_markdown import markdown, plot_losses  # noqa: E402
from quality_runs import (  # noqa: E402
    DEFAULT_OOD, add_ood_aggregates, collect_run, count_params, load_reused, model_labels, order_sets, reuse_check,
)
from quality_stats import _runs, load_spread, relative, summarize, verdict  # noqa: E402

def collect(root: str, models: Sequence[str], seeds: Sequence[int], decode_tag: Optional[str] = None,
            ood_sets: Sequence[str] = DEFAULT_OOD, compute_params: bool = True,
            reused: Optional[Dict] = None, spread_from: Optional[Dict] = None) -> Dict:
    """All runs ``<root>/seed<S>/asr_<model>`` plus the summaries over seeds and the verdict.

    ``reused`` (:func:`load_reused`): runs taken from an earlier report instead of ``root``; their
    models come first in the report.  ``spread_from`` (:func:`load_spread`): an earlier report's
    seed spread, the yardstick of a one-seed report's verdict."""
    runs, missing = {}, []
    reused_models = list(reused["models"]) if reused else []
    models = reused_models + [m for m in models if m not in reused_models]
    for s in seeds:
        for m in models:
            if m in reused_models:
                runs.setdefault(str(s), {})[m] = reused["runs"][str(s)][m]
                continue
            exp = os.path.join(root, f"seed{s}", f"asr_{m}")
            run = collect_run(exp, decode_tag, ood_sets, compute_params) if os.path.isdir(exp) else None
            if run is None or not run["wer"]:
                missing.append(f"seed {s} {m} ({exp}: no scores)")
                print(f"WARNING: seed {s}, {m}: no scores in {exp}", file=sys.stderr)
                run = None
            runs.setdefault(str(s), {})[m] = run
    sets = order_sets({k for r in _runs(runs) for k in r["wer"]})
    ood = [s for s in ood_sets if s in sets]  # the OOD sets that were decoded
    for r in _runs(runs):
        add_ood_aggregates(r, ood)
    result = {
        "root": root,
        "models": list(models),
        "labels": model_labels(models, _runs(runs)),
        "seeds": [int(s) for s in seeds],
        "sets": sets,
        "ood_sets": ood,
        "in_domain_sets": [s for s in sets if s not in ood],
        "decode_tags": sorted({r["decode_tag"] for r in _runs(runs)}),
        "missing": missing,
        "runs": runs,
        "reused": {k: v for k, v in reused.items() if k != "runs"} if reused else None,
        "spread_from": spread_from,
    }
    result["summary"] = summarize(result)
    result["relative"] = relative(result)
    result["verdict"] = verdict(result)
    return result


def data_info(dump: str, train_set: str, sets: Sequence[str]) -> Optional[Dict]:
    """Size of the training set and the test sets from the dump dir (utt2num_samples, 16 kHz)."""
    path = os.path.join(dump, train_set, "utt2num_samples")
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        samples = [int(line.split()[1]) for line in f if len(line.split()) == 2]
    tests = {}
    for s in sets:
        p = os.path.join(dump, s, "wav.scp")
        if os.path.isfile(p):
            with open(p, encoding="utf-8") as f:
                tests[s] = sum(1 for line in f if line.strip())
    return {"train_set": train_set, "train_utts": len(samples), "train_hours": sum(samples) / 16000 / 3600,
            "test_utts": tests}


def write_report(result: Dict, out_dir: str, name: str = "quality") -> Dict[str, str]:
    """``<out_dir>/<name>.md``, ``<name>.json`` and ``<name>_loss.png`` (paths into a checkout
    written relative to its root: :func:`checkout_relative`)."""
    os.makedirs(out_dir, exist_ok=True)
    result.update(checkout_relative(result))
    result["name"] = name
    paths = {k: os.path.join(out_dir, f) for k, f in
             (("md", f"{name}.md"), ("json", f"{name}.json"), ("png", f"{name}_loss.png"))}
    plot_losses(result, paths["png"])
    with open(paths["md"], "w", encoding="utf-8") as f:
        f.write(markdown(result))
    tmp = paths["json"] + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(result, f, indent=1)
    os.replace(tmp, paths["json"])
    return paths


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--count_params", nargs="+", metavar="EXP",
                   help="only write EXP/params.json (parameter counts) for each experiment dir and exit")
    p.add_argument("--root", help="experiment root holding seed<S>/asr_<model>/")
    p.add_argument("--models", nargs="+", default=["dense", "switch", "omni"])
    p.add_argument("--seeds", nargs="+", type=int, default=[1])
    p.add_argument("--decode_tag", default=None, help="decode dir name (default: the only one with scores)")
    p.add_argument("--ood_sets", nargs="*", default=DEFAULT_OOD)
    p.add_argument("--dump", default=None, help="dump dir (dump/raw): data sizes for the report")
    p.add_argument("--train_set", default="train")
    p.add_argument("--command", default=None, help="command line to quote in the report")
    p.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    p.add_argument("--name", default="quality", help="report file names: <out>/<name>.{md,json}, <name>_loss.png")
    p.add_argument("--reuse", metavar="JSON", help="an earlier report's JSON: take the runs of --reuse_models "
                   "(same seeds) from it instead of training them again")
    p.add_argument("--reuse_models", nargs="+", default=[], metavar="MODEL")
    p.add_argument("--reuse_note", default=None, help="why the reused runs stand for the current code (quoted)")
    p.add_argument("--reuse_check", metavar="DIR", default=None,
                   help="short re-runs of the reused runs at the current code (DIR/seed<S>/asr_<model>/train.log): "
                   "compared epoch by epoch in the report")
    p.add_argument("--spread_from", metavar="JSON", default=None,
                   help="an earlier report's JSON with several seeds of the same models: its seed standard "
                   "deviations judge the differences of a one-seed report")
    p.add_argument("--streaming_tag", default=None, metavar="TAG",
                   help="the runs' streaming decode dir (quality.sh --streaming_decode true): set beside the "
                   "full-utterance decoding (benchmarks/quality_streaming.py)")
    p.add_argument("--note", action="append", default=[], metavar="TEXT",
                   help="a note on the runs for the report's header (repeatable), e.g. a pause during a training")
    args = p.parse_args(argv)

    if args.count_params:
        for exp in args.count_params:
            counts = count_params(exp)
            with open(os.path.join(exp, "params.json"), "w", encoding="utf-8") as f:
                json.dump(counts, f, indent=1)
            print(f"{exp}: {counts['total']:,} parameters, {counts['active_per_frame']:,} active per frame")
        return 0
    if not args.root:
        p.error("--root is required")
    if bool(args.reuse) != bool(args.reuse_models):
        p.error("--reuse and --reuse_models go together")
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", args.name):
        p.error(f"--name: '{args.name}' is not a plain file name")
    reused = None
    if args.reuse:
        try:
            reused = load_reused(args.reuse, args.reuse_models, args.seeds)
        except (OSError, ValueError) as e:
            p.error(str(e))
        reused["note"] = args.reuse_note
        if args.reuse_check:
            try:
                reused["check"] = reuse_check(args.reuse_check, reused)
            except ValueError as e:
                p.error(str(e))
    elif args.reuse_check:
        p.error("--reuse_check needs --reuse")
    spread_from = None
    if args.spread_from:
        try:
            spread_from = load_spread(args.spread_from, [m for m in args.models])
        except (OSError, ValueError) as e:
            p.error(str(e))
    result = collect(args.root, args.models, args.seeds, args.decode_tag, args.ood_sets, reused=reused,
                     spread_from=spread_from)
    if not _runs(result["runs"]):
        print(f"ERROR: no scored run under {args.root}/seed<S>/asr_<model>", file=sys.stderr)
        return 1
    if args.streaming_tag:
        import quality_streaming

        try:
            result["streaming"] = quality_streaming.collect_streaming(result, args.root, args.streaming_tag)
        except ValueError as e:
            p.error(str(e))
        result["verdict"] += quality_streaming.verdict(result)
    result["command"] = args.command
    result["notes"] = args.note
    if args.dump:
        result["data"] = data_info(args.dump, args.train_set, result["sets"])
    paths = write_report(result, args.out, args.name)
    print("\n".join(f"- {line}" for line in result["verdict"]))
    print(f"wrote {paths['md']}, {paths['json']}, {paths['png']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
