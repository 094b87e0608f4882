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
"""

import argparse
import datetime
import glob
import json
import math
import os
import re
import sys
from typing import Dict, List, Optional, Sequence, Tuple

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _report import checkout_relative  # noqa: E402

DEFAULT_OOD = ["test_unseen_voice", "test_noisy", "test_tempo", "test_real"]
SET_ORDER = ["test_seen", "test_unseen_voice", "test_noisy", "test_tempo", "test_real"]
# model names of quality.sh --configs -> labels; {backbone} is the encoder family of the run's config.yaml
LABELS = {
    "dense": "Dense {backbone}",
    "switch": "Switch {backbone}",
    "omni": "Omni-router {backbone}",
    # conf/tuning/train_asr_omni_router_conformer_per_position.yaml (encoder_conf.router_per_ffn_position)
    "omni_per_position": "Omni-router {backbone}, one router per FFN position",
    # conf/tuning/train_asr_omni_router_conformer_router_aux.yaml (diagnostic)
    "omni_router_aux": "Omni-router, aux losses per router",
}
SHORT = {"dense": "dense", "switch": "Switch", "omni": "Omni-router", "omni_router_aux": "Omni-router (aux/router)",
         "omni_per_position": "Omni-router per FFN position"}
# compared pairs (model, reference), when both are in the report
PAIRS = (("omni", "switch"), ("omni_per_position", "switch"), ("omni_per_position", "omni"),
         ("omni", "dense"), ("omni_per_position", "dense"), ("switch", "dense"))
REFERENCES = ("dense", "switch")  # relative changes are given against these models (when present)


# ----------------------------------------------------------------------------- train.log
_EPOCH_LINE = re.compile(r"(\d+)epoch results: (.*)$")
_PHASE = re.compile(r"(?:^|, )\[([A-Za-z0-9_]+)\] ")
_ITEM_SPLIT = re.compile(r", (?=[A-Za-z0-9_.]+=)")
_TIMESTAMP = re.compile(r"(\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}),(\d{3}) \(")
_SPAN_UNITS = {
    "week": 604800.0, "day": 86400.0, "hour": 3600.0, "minute": 60.0, "second": 1.0,
    "millisecond": 1e-3, "microsecond": 1e-6, "nanosecond": 1e-9,
}


def parse_timespan(text: str) -> Optional[float]:
    """Seconds of a ``humanfriendly.format_timespan`` text ("1 hour, 2 minutes and 3.5 seconds")."""
    total, found = 0.0, False
    for num, unit in re.findall(r"([0-9]*\.?[0-9]+) (week|day|hour|minute|second|millisecond|microsecond"
                                r"|nanosecond)s?\b", text):
        total += float(num) * _SPAN_UNITS[unit]
        found = True
    return total if found else None


def _value(key: str, text: str):
    text = text.strip()
    if key == "time":
        return parse_timespan(text)
    try:
        return float(text)
    except ValueError:
        return text


def parse_epoch_line(line: str):
    """``(epoch, {phase: {key: value}})`` of an ESPnet ``Nepoch results:`` log line, else None."""
    m = _EPOCH_LINE.search(line)
    if not m:
        return None
    parts = _PHASE.split(m.group(2))
    phases = {}
    for name, body in zip(parts[1::2], parts[2::2]):
        items = {}
        for item in _ITEM_SPLIT.split(body.strip().rstrip(",")):
            if "=" in item:
                k, v = item.split("=", 1)
                items[k.strip()] = _value(k.strip(), v)
        phases[name] = items
    return int(m.group(1)), phases


def train_logs(exp: str) -> List[str]:
    """The training logs of ``exp``, oldest first (quality.sh keeps earlier ones as train.log.<time>)."""
    older = sorted(p for p in glob.glob(os.path.join(exp, "train.log.*")) if re.search(r"\.log\.\d", p))
    current = os.path.join(exp, "train.log")
    return older + ([current] if os.path.isfile(current) else [])


def read_train_logs(exp: str) -> Dict:
    """Epoch results (a later log overrides an earlier one for the same epoch) and log spans."""
    epochs, span, logs = {}, 0.0, train_logs(exp)
    for path in logs:
        first = last = None
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                t = _TIMESTAMP.search(line)
                if t:
                    stamp = datetime.datetime.strptime(t.group(1), "%Y-%m-%d %H:%M:%S")
                    stamp += datetime.timedelta(milliseconds=int(t.group(2)))
                    first = first or stamp
                    last = stamp
                parsed = parse_epoch_line(line)
                if parsed:
                    epochs[parsed[0]] = parsed[1]
        if first is not None:
            span += (last - first).total_seconds()
    return {"logs": logs, "epochs": dict(sorted(epochs.items())), "log_span_seconds": span if logs else None}


def curves(epochs: Dict[int, Dict]) -> Dict:
    """Per-epoch curves.  ``*_loss_asr`` is the ASR loss (CTC + attention): ``loss_asr`` of
    moe_espnet models (their ``loss`` adds the MoE auxiliary losses), ``loss`` of ESPnet's model."""
    out = {k: [] for k in ("epoch", "train_loss", "valid_loss", "train_loss_asr", "valid_loss_asr",
                           "valid_acc", "valid_cer_ctc", "train_seconds", "valid_seconds")}
    for ep, phases in sorted(epochs.items()):
        tr, va = phases.get("train", {}), phases.get("valid", {})
        out["epoch"].append(ep)
        out["train_loss"].append(_num(tr.get("loss")))
        out["valid_loss"].append(_num(va.get("loss")))
        out["train_loss_asr"].append(_num(tr.get("loss_asr", tr.get("loss"))))
        out["valid_loss_asr"].append(_num(va.get("loss_asr", va.get("loss"))))
        out["valid_acc"].append(_num(va.get("acc")))
        out["valid_cer_ctc"].append(_num(va.get("cer_ctc")))  # greedy CTC CER; CTC-only models have no acc
        out["train_seconds"].append(_num(tr.get("time")))
        # validation and attention plotting belong to the epoch's training time
        extra = [_num(p.get("time")) for n, p in phases.items() if n != "train"]
        out["valid_seconds"].append(sum(x for x in extra if x is not None) if extra else None)
    return out


def _num(v):
    """A finite number, else None (ESPnet logs ``acc=nan`` for models without an attention decoder)."""
    return float(v) if isinstance(v, (int, float)) and math.isfinite(v) else None


# ----------------------------------------------------------------------------- scores
def find_decode_tag(exp: str, decode_tag: Optional[str] = None) -> Optional[str]:
    """The decode dir of ``exp`` that holds scores: ``decode_tag`` if given, else the only one."""
    if decode_tag:
        return decode_tag if os.path.isdir(os.path.join(exp, decode_tag)) else None
    tags = sorted({os.path.basename(os.path.dirname(os.path.dirname(os.path.dirname(p))))
                   for p in glob.glob(os.path.join(exp, "*", "*", "score_wer", "summary.json"))})
    if len(tags) > 1:
        raise ValueError(f"{exp} holds several decode dirs with scores ({', '.join(tags)}): give --decode_tag")
    return tags[0] if tags else None


def read_scores(exp: str, decode_tag: str) -> Dict[str, Dict]:
    """``{set: {"wer": Err, "cer": Err, "wer_summary": path, ..., "wer_errors", "wer_ref", ...}}``."""
    out = {}
    for path in sorted(glob.glob(os.path.join(exp, decode_tag, "*", "score_wer", "summary.json"))):
        d = os.path.dirname(os.path.dirname(path))
        name = os.path.basename(d)
        entry = {}
        for unit in ("wer", "cer"):
            p = os.path.join(d, f"score_{unit}", "summary.json")
            if not os.path.isfile(p):
                continue
            with open(p, encoding="utf-8") as f:
                s = json.load(f)
            entry[unit] = float(s["Err"])
            entry[f"{unit}_summary"] = p
            c = s.get("counts") or {}
            if {"sub", "del", "ins"} <= set(c) and "Wrd" in s:
                entry[f"{unit}_errors"] = int(c["sub"] + c["del"] + c["ins"])
                entry[f"{unit}_ref"] = int(s["Wrd"])
            entry["utterances"] = s.get("Snt")
        out[name] = entry
    return out


def ood_average(values: Dict[str, float], ood_sets: Sequence[str]) -> Optional[float]:
    """Unweighted mean of ``values`` over the OOD sets (None if one of them is missing)."""
    vals = [values.get(s) for s in ood_sets]
    if not vals or any(v is None for v in vals):
        return None
    return sum(vals) / len(vals)


def pooled(scores: Dict[str, Dict], sets: Sequence[str], unit: str) -> Optional[float]:
    """Summed errors / summed reference units over ``sets``, in percent."""
    err = ref = 0
    for s in sets:
        e = scores.get(s, {})
        if f"{unit}_errors" not in e:
            return None
        err += e[f"{unit}_errors"]
        ref += e[f"{unit}_ref"]
    return 100.0 * err / ref if ref else None


def rel_change(value: Optional[float], ref: Optional[float]) -> Optional[float]:
    """``100 * (value - ref) / ref`` (None when undefined)."""
    if value is None or ref is None or ref == 0:
        return None
    return 100.0 * (value - ref) / ref


def mean_std(values: Sequence[Optional[float]]) -> Dict:
    """Mean and sample standard deviation (n - 1) of the values that are not None."""
    v = [float(x) for x in values if x is not None]
    n = len(v)
    mean = sum(v) / n if n else None
    std = math.sqrt(sum((x - mean) ** 2 for x in v) / (n - 1)) if n > 1 else None
    return {"mean": mean, "std": std, "n": n, "values": v}


# ----------------------------------------------------------------------------- parameters
def count_params(exp: str) -> Dict:
    """Parameter counts of the model of ``exp/config.yaml`` (built on the CPU, random weights).

    ``active_per_frame``: what one frame uses: for every MoE FFN only ``top_k`` of its ``E``
    experts (the routers count in full); a dense model's is its total.
    """
    import espnet_omnirouter  # noqa: F401  (registers the encoders and the model)
    from espnet2.tasks.asr import ASRTask

    model, _ = ASRTask.build_model_from_file(os.path.join(exp, "config.yaml"), None, "cpu")
    total = sum(p.numel() for p in model.parameters())
    enc = model.encoder
    enc_total = sum(p.numel() for p in enc.parameters())
    inactive = expert_params = 0
    routers, experts_seen = {}, set()
    num_experts = top_k = None
    ffns = enc.moe_ffns() if hasattr(enc, "moe_ffns") else []
    for ffn in ffns:
        experts, router = ffn.experts, ffn.router
        routers[id(router)] = sum(p.numel() for p in router.parameters())
        if id(experts) in experts_seen:
            continue
        experts_seen.add(id(experts))
        n = sum(p.numel() for p in experts.parameters())
        num_experts, top_k = experts.num_experts, router.top_k
        expert_params += n
        inactive += n * (experts.num_experts - router.top_k) // experts.num_experts
    return {
        "total": int(total),
        "active_per_frame": int(total - inactive),
        "encoder_total": int(enc_total),
        "encoder_active_per_frame": int(enc_total - inactive),
        "encoder": type(enc).__name__,
        "num_moe_ffns": len(ffns),
        "num_experts": num_experts,
        "top_k": top_k,
        "num_routers": len(routers),
        "router_params": int(sum(routers.values())),
        "expert_params": int(expert_params),
    }


def read_params(exp: str, compute: bool = True) -> Optional[Dict]:
    path = os.path.join(exp, "params.json")
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    if compute and os.path.isfile(os.path.join(exp, "config.yaml")):
        try:
            return count_params(exp)
        except Exception as e:  # a report without counts beats no report
            print(f"WARNING: cannot count the parameters of {exp}: {e}", file=sys.stderr)
    return None


def read_routing(exp: str) -> Optional[Dict]:
    path = os.path.join(exp, "routing_analysis", "summary.json")
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        s = json.load(f)
    return {"path": path, "headline": s.get("headline", {})}


# ----------------------------------------------------------------------------- collection
def order_sets(names) -> List[str]:
    names = set(names)
    return [s for s in SET_ORDER if s in names] + sorted(names - set(SET_ORDER))


def collect_run(exp: str, decode_tag: Optional[str], ood_sets: Sequence[str] = DEFAULT_OOD,
                compute_params: bool = True) -> Dict:
    """Everything the report uses from one experiment dir (see the module docstring)."""
    tag = find_decode_tag(exp, decode_tag)
    scores = read_scores(exp, tag) if tag else {}
    logs = read_train_logs(exp)
    c = curves(logs["epochs"])
    wer = {s: e["wer"] for s, e in scores.items() if "wer" in e}
    cer = {s: e["cer"] for s, e in scores.items() if "cer" in e}
    last = {k: (v[-1] if v else None) for k, v in c.items() if k != "epoch"}
    best_acc = [a for a in c["valid_acc"] if a is not None]
    best_cer = [a for a in c["valid_cer_ctc"] if a is not None]
    secs = [t for t in c["train_seconds"] + c["valid_seconds"] if t is not None]
    run = {
        "exp": exp,
        "decode_tag": tag,
        "wer": wer,
        "cer": cer,
        "score_files": {s: {u: e.get(f"{u}_summary") for u in ("wer", "cer")} for s, e in scores.items()},
        "utterances": {s: e.get("utterances") for s, e in scores.items()},
        "counts": {s: {k: v for k, v in e.items() if k.endswith(("_errors", "_ref"))} for s, e in scores.items()},
        "train_logs": logs["logs"],
        "curves": c,
        "final": {
            "epochs": c["epoch"][-1] if c["epoch"] else None,
            "train_loss": last["train_loss"],
            "valid_loss": last["valid_loss"],
            "train_loss_asr": last["train_loss_asr"],
            "valid_loss_asr": last["valid_loss_asr"],
            "valid_acc": last["valid_acc"],
            "best_valid_acc": max(best_acc) if best_acc else None,
            "valid_cer_ctc": last["valid_cer_ctc"],
            "best_valid_cer_ctc": min(best_cer) if best_cer else None,
        },
        "train_seconds": sum(secs) if secs else None,
        "log_span_seconds": logs["log_span_seconds"],
        "params": read_params(exp, compute_params),
        "routing": read_routing(exp),
        "encoder": read_encoder(exp),
    }
    return add_ood_aggregates(run, ood_sets)


def read_encoder(exp: str) -> Optional[str]:
    """The ``encoder:`` of ``exp/config.yaml`` (e.g. ``omni_router_transformer``), None without one."""
    path = os.path.join(exp, "config.yaml")
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        for line in f:
            m = re.match(r"encoder:\s*(\S+)\s*$", line)
            if m:
                return m.group(1)
    return None


# encoder family of a config's `encoder` (ESPnet's name or ours), first match wins
FAMILIES = (("contextual_block_conformer", "contextual-block Conformer"),
            ("contextual_block_transformer", "contextual-block Transformer"),
            ("e_branchformer", "E-Branchformer"), ("conformer", "Conformer"), ("transformer", "Transformer"))


def family(encoder: str) -> str:
    """The family name of ``encoder`` (e.g. "omni_router_e_branchformer" -> "E-Branchformer")."""
    return next((name for key, name in FAMILIES if key in encoder), encoder)


def backbone(encoders: Sequence[Optional[str]]) -> str:
    """The encoder family (:data:`FAMILIES`) when every run's encoder is of one family, else "encoder"."""
    kinds = {family(e) for e in encoders if e}
    return kinds.pop() if len(kinds) == 1 else "Conformer" if not kinds else "encoder"


def model_labels(models: Sequence[str], runs: Sequence[Dict]) -> Dict[str, str]:
    b = backbone([r.get("encoder") for r in runs])
    return {m: LABELS.get(m, m).format(backbone=b) for m in models}


def load_reused(path: str, models: Sequence[str], seeds: Sequence[int]) -> Dict:
    """The runs of ``models`` for ``seeds`` from an earlier report's JSON (``quality_report.py --reuse``)."""
    with open(path, encoding="utf-8") as f:
        old = json.load(f)
    runs = {}
    for s in seeds:
        for m in models:
            run = old.get("runs", {}).get(str(s), {}).get(m)
            if run is None:
                raise ValueError(f"--reuse {path}: no run of model '{m}' for seed {s} "
                                 f"(it has seeds {sorted(old.get('runs', {}))}, models {old.get('models')})")
            run.setdefault("encoder", None)
            for k in ("valid_cer_ctc", "best_valid_cer_ctc"):
                run["final"].setdefault(k, None)
            run["curves"].setdefault("valid_cer_ctc", [None] * len(run["curves"]["epoch"]))
            runs.setdefault(str(s), {})[m] = run
    return {"from": path, "command": old.get("command"), "models": list(models), "runs": runs}


def _epoch_seconds(c: Dict, i: int) -> Optional[float]:
    """Training plus validation seconds of epoch ``c["epoch"][i]`` of the curves ``c``."""
    parts = [c.get(k, [None] * (i + 1))[i] for k in ("train_seconds", "valid_seconds")]
    return None if parts[0] is None else parts[0] + (parts[1] or 0.0)


def reuse_check(check_root: str, reused: Dict) -> Dict:
    """Compare short re-runs of the reused runs, trained with the current code and the same seed
    (``<check_root>/seed<S>/asr_<model>/train.log*``), with the reused runs epoch by epoch.

    Returns ``{"root", "rows", "unchecked", "max_diff", "seed_spread"}``: one row per (model, seed,
    epoch) that both have, with the train and valid ASR losses and the epoch times (training +
    validation seconds: the machine's speed then and now) of both; ``max_diff`` the largest
    absolute difference of either loss; ``seed_spread`` the largest difference between the reused
    runs' seeds at the same epochs and losses (the scale to read ``max_diff`` against; None with one
    seed).  Raises ValueError when no reused run has a re-run with epochs in common."""
    rows, unchecked, spread = [], [], []
    for s, per_model in sorted(reused["runs"].items(), key=lambda kv: int(kv[0])):
        for m, run in per_model.items():
            exp = os.path.join(check_root, f"seed{s}", f"asr_{m}")
            check = curves(read_train_logs(exp)["epochs"]) if os.path.isdir(exp) else None
            old = run["curves"]
            common = [e for e in (check or {}).get("epoch", []) if e in old["epoch"]]
            if not common:
                unchecked.append(f"seed {s} {m} ({exp}: no epoch in common)")
                continue
            for e in common:
                i, j = old["epoch"].index(e), check["epoch"].index(e)
                row = {"model": m, "seed": int(s), "epoch": e}
                row["epoch_seconds"] = {"reused": _epoch_seconds(old, i), "rerun": _epoch_seconds(check, j)}
                for k in ("train_loss_asr", "valid_loss_asr"):
                    row[k] = {"reused": old[k][i], "rerun": check[k][j]}
                    others = [r["curves"] for r2 in reused["runs"].values() for m2, r in r2.items() if m2 == m]
                    values = [c[k][c["epoch"].index(e)] for c in others if e in c["epoch"]]
                    if len(values) > 1 and None not in values:
                        spread.append(max(values) - min(values))
                rows.append(row)
    if not rows:
        raise ValueError(f"--reuse_check {check_root}: no re-run of a reused run with an epoch in common "
                         f"(expected seed<S>/asr_<model>/train.log for {', '.join(reused['models'])})")
    diffs = [abs(r[k]["rerun"] - r[k]["reused"]) for r in rows for k in ("train_loss_asr", "valid_loss_asr")
             if r[k]["rerun"] is not None and r[k]["reused"] is not None]
    return {"root": check_root, "rows": rows, "unchecked": unchecked, "max_diff": max(diffs) if diffs else None,
            "seed_spread": max(spread) if spread else None}


def add_ood_aggregates(run: Dict, ood_sets: Sequence[str]) -> Dict:
    """Set ``{wer,cer}_ood_avg`` and ``{wer,cer}_ood_pooled`` of a run (see :func:`collect_run`)."""
    for unit in ("wer", "cer"):
        run[f"{unit}_ood_avg"] = ood_average(run[unit], ood_sets)
        run[f"{unit}_ood_pooled"] = pooled(run["counts"], ood_sets, unit)
    return run


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


def _runs(runs: Dict):
    return [r for per_seed in runs.values() for r in per_seed.values() if r is not None]


def _per_seed(result: Dict, model: str):
    return [result["runs"][str(s)].get(model) for s in result["seeds"]
            if result["runs"][str(s)].get(model) is not None]


def summarize(result: Dict) -> Dict:
    out = {}
    for m in result["models"]:
        runs = _per_seed(result, m)
        if not runs:
            out[m] = None
            continue
        summ = {"n_seeds": len(runs)}
        for unit in ("wer", "cer"):
            summ[unit] = {s: mean_std([r[unit].get(s) for r in runs]) for s in result["sets"]}
            for agg in ("ood_avg", "ood_pooled"):
                summ[f"{unit}_{agg}"] = mean_std([r[f"{unit}_{agg}"] for r in runs])
        summ["final"] = {k: mean_std([r["final"].get(k) for r in runs]) for k in runs[0]["final"]}
        summ["train_seconds"] = mean_std([r["train_seconds"] for r in runs])
        summ["log_span_seconds"] = mean_std([r["log_span_seconds"] for r in runs])
        summ["params"] = next((r["params"] for r in runs if r["params"]), None)
        heads = [r["routing"]["headline"] for r in runs if r["routing"]]
        summ["routing"] = None
        if heads:
            keys = list(dict.fromkeys(k for h in heads for k in h))
            summ["routing"] = {k: mean_std([h.get(k) if isinstance(h.get(k), (int, float)) else None
                                            for h in heads]) for k in keys}
        out[m] = summ
    return out


def relative(result: Dict) -> Dict:
    """``{reference: {model: {unit: {set or ood_avg/ood_pooled: % change of the means}}}}``."""
    summ, out = result["summary"], {}
    for ref in REFERENCES:
        if ref not in result["models"] or not summ.get(ref):
            continue
        out[ref] = {}
        for m in result["models"]:
            # every model against each reference, except a reference against a later one (dense vs Switch
            # is the inverse of Switch vs dense)
            if m == ref or not summ.get(m) or (m in REFERENCES and REFERENCES.index(m) < REFERENCES.index(ref)):
                continue
            out[ref][m] = {}
            for unit in ("wer", "cer"):
                row = {s: rel_change(summ[m][unit][s]["mean"], summ[ref][unit][s]["mean"]) for s in result["sets"]}
                for agg in ("ood_avg", "ood_pooled"):
                    row[agg] = rel_change(summ[m][f"{unit}_{agg}"]["mean"], summ[ref][f"{unit}_{agg}"]["mean"])
                out[ref][m][unit] = row
    return out


def _signed(x: Optional[float]) -> str:
    return "n/a" if x is None else f"{x:+.1f}%"


def _word(x: Optional[float]) -> str:
    if x is None:
        return "not comparable"
    return "worse" if x > 0 else "better" if x < 0 else "same"


SPREAD_KEYS = ("wer", "cer", "wer_ood_avg", "cer_ood_avg", "wer_ood_pooled", "cer_ood_pooled", "final")


def load_spread(path: str, models: Sequence[str]) -> Dict:
    """The seed spread of an earlier report (its JSON at ``path``) for ``models``, which it must
    have trained with more than one seed: ``{"from", "seeds", "summary"}`` (the summary cut to the
    statistics a verdict compares)."""
    with open(path, encoding="utf-8") as f:
        earlier = json.load(f)
    summ = earlier.get("summary", {})
    if len(earlier.get("seeds", [])) < 2:
        raise ValueError(f"--spread_from {path}: has seeds {earlier.get('seeds')}, a spread needs two or more")
    lacking = [m for m in models if not summ.get(m)]
    if lacking:
        raise ValueError(f"--spread_from {path}: no runs of {', '.join(lacking)} (it has {', '.join(summ)})")
    return {"from": path, "seeds": earlier["seeds"],
            "summary": {m: {k: summ[m][k] for k in SPREAD_KEYS if k in summ[m]} for m in models}}


def yardstick(result: Dict, model: str, ref: str, pick) -> Optional[Tuple[float, int, Optional[str]]]:
    """``(spread, n, source)``: what a difference between ``model`` and ``ref`` is judged against,
    the larger of their seed standard deviations over the report's ``n`` seeds (``source`` None),
    or, in a one-seed report with ``spread_from``, over that earlier report's seeds (``source``: its
    JSON); None without either.  ``pick(model_summary)`` gives the statistic's {mean, std, n}."""
    earlier = result.get("spread_from") or {}
    for summ, source in ((result["summary"], None), (earlier.get("summary"), earlier.get("from"))):
        try:
            a, b = pick(summ[model]), pick(summ[ref])
        except (KeyError, TypeError):
            continue
        if a and b and min(a["n"], b["n"]) > 1 and a["std"] is not None and b["std"] is not None:
            return max(a["std"], b["std"]), min(a["n"], b["n"]), source
    return None


def _judged(diff: float, stick: Optional[Tuple[float, int, Optional[str]]], unit: str = "") -> str:
    """"; the difference (...) is larger than the larger seed standard deviation (...) over n seeds"."""
    if stick is None:
        return "; one seed, so no spread estimate"
    spread, n, source = stick
    return (f"; the difference ({diff:.2f}{unit}) is {'larger' if diff > spread else 'not larger'} than the "
            f"larger seed standard deviation ({spread:.2f}) over {n} seeds"
            + (f" of `{os.path.basename(source)}`" if source else ""))


def compare_sentence(result: Dict, model: str, ref: str, unit: str = "wer", column: str = "ood_avg") -> str:
    """E.g. "Omni-router vs Switch on out-of-domain average WER: +3.1% relative (worse; 20.5% vs 19.9%)"."""
    summ = result["summary"]
    if column in ("ood_avg", "ood_pooled"):
        pick = lambda m: m[f"{unit}_{column}"]  # noqa: E731
        where = "out-of-domain average" if column == "ood_avg" else "out-of-domain (pooled)"
    else:
        pick = lambda m: m[unit][column]  # noqa: E731
        where = column
    a, b = pick(summ[model]), pick(summ[ref])
    r = rel_change(a["mean"], b["mean"])
    text = (f"{SHORT.get(model, model)} vs {SHORT.get(ref, ref)} on {where} {unit.upper()}: "
            f"{_signed(r)} relative ({_word(r)}; {_pct(a['mean'])} vs {_pct(b['mean'])})")
    if r is not None:
        text += _judged(abs(a["mean"] - b["mean"]), yardstick(result, model, ref, pick), " points")
    return text


def _pct(x: Optional[float]) -> str:
    return "n/a" if x is None else f"{x:.2f}%"


def verdict(result: Dict) -> List[str]:
    summ = result["summary"]
    models = [m for m in result["models"] if summ.get(m)]
    lines = []
    if not models:
        return ["No scored model: nothing to compare."]

    def ranking(key_fn, what):
        vals = [(key_fn(m), m) for m in models]
        vals = [(v, m) for v, m in vals if v is not None]
        if not vals:
            return None
        vals.sort()
        best = vals[0]
        ties = [m for v, m in vals if v == best[0]]
        head = (f"Lowest {what}: **{' and '.join(result['labels'][m] for m in ties)}** ({best[0]:.2f}%)"
                if len(ties) == 1 else
                f"Lowest {what}: tie between {', '.join(result['labels'][m] for m in ties)} ({best[0]:.2f}%)")
        rest = [f"{result['labels'][m]} {v:.2f}%" for v, m in vals if m not in ties]
        return head + (f"; then {', '.join(rest)}." if rest else ".")

    ood_names = ", ".join(result["ood_sets"])
    line = ranking(lambda m: summ[m]["wer_ood_avg"]["mean"], f"out-of-domain average WER (mean over {ood_names})")
    if line:
        lines.append(line)
    for s in result["in_domain_sets"]:
        line = ranking(lambda m, s=s: summ[m]["wer"][s]["mean"], f"in-domain WER ({s})")
        if line:
            lines.append(line)
    pairs = [(a, b) for a, b in PAIRS if a in models and b in models]
    for a, b in pairs:
        lines.append(compare_sentence(result, a, b, "wer", "ood_avg") + ".")
        for s in result["in_domain_sets"]:
            lines.append(compare_sentence(result, a, b, "wer", s) + ".")
    for a, b in pairs:  # character errors: the finer measure where word errors saturate (CTC-only models)
        lines.append(compare_sentence(result, a, b, "cer", "ood_avg") + ".")
    for a, b in pairs:
        line = compare_loss(result, a, b)
        if line:
            lines.append(line + ".")
    for m in ("omni", "omni_per_position"):
        if m in models and "switch" in models:
            r = rel_change(summ[m]["wer_ood_avg"]["mean"], summ["switch"]["wer_ood_avg"]["mean"])
            name = SHORT[m]
            if r is not None and r >= 0:
                lines.append(f"{name} does **not** beat Switch on the out-of-domain average WER in this run.")
            elif r is not None:
                lines.append(f"{name} beats Switch on the out-of-domain average WER in this run.")
    return lines


def compare_loss(result: Dict, model: str, ref: str, key: str = "train_loss_asr") -> Optional[str]:
    """E.g. "Final training ASR loss, Omni-router vs Switch: 15.73 vs 14.30 (higher; ...)": the paper
    behind Omni-router reports a lower training loss than Switch's."""
    a, b = result["summary"][model]["final"].get(key), result["summary"][ref]["final"].get(key)
    if not a or not b or a["mean"] is None or b["mean"] is None:
        return None
    what = {"train_loss_asr": "training ASR loss", "valid_loss_asr": "validation ASR loss"}[key]
    word = "lower" if a["mean"] < b["mean"] else "higher" if a["mean"] > b["mean"] else "equal"
    text = (f"Final {what}, {SHORT.get(model, model)} vs {SHORT.get(ref, ref)}: {a['mean']:.2f} vs "
            f"{b['mean']:.2f} ({word}")
    stick = yardstick(result, model, ref, lambda m: m["final"][key])
    return text + _judged(abs(a["mean"] - b["mean"]), stick) + ")"


# ----------------------------------------------------------------------------- outputs
COLORS = {"dense": "tab:gray", "switch": "tab:blue", "omni": "tab:red"}


def ctc_only(result: Dict) -> bool:
    """No run reports an attention accuracy: the models have no attention decoder (``ctc_weight: 1.0``)."""
    runs = _runs(result["runs"])
    return bool(runs) and all(v is None for r in runs for v in r["curves"]["valid_acc"])


def asr_loss_name(result: Dict) -> str:
    return "ASR loss (CTC)" if ctc_only(result) else "ASR loss (CTC + attention)"


def plot_losses(result: Dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    others = iter(["tab:green", "tab:orange", "tab:purple", "tab:brown", "tab:olive", "tab:cyan"])
    for m in result["models"]:
        runs = _per_seed(result, m)
        if not runs:
            continue
        color = COLORS.get(m) or next(others)
        for phase, style in (("train", "--"), ("valid", "-")):
            by_epoch = {}
            for r in runs:
                for ep, v in zip(r["curves"]["epoch"], r["curves"][f"{phase}_loss_asr"]):
                    if v is not None and math.isfinite(v):
                        by_epoch.setdefault(ep, []).append(v)
            if not by_epoch:
                continue
            eps = sorted(by_epoch)
            mean = [sum(by_epoch[e]) / len(by_epoch[e]) for e in eps]
            ax.plot(eps, mean, style, color=color, marker="o", markersize=3,
                    label=f"{result['labels'][m]} ({phase})")
            if len(runs) > 1:
                ax.fill_between(eps, [min(by_epoch[e]) for e in eps], [max(by_epoch[e]) for e in eps],
                                color=color, alpha=0.15, linewidth=0)
    ax.set_xlabel("epoch")
    ax.set_ylabel(asr_loss_name(result))
    n = len(result["seeds"])
    title = "Training (dashed) and validation (solid) loss"
    ax.set_title(title + (f", mean and range over {n} seeds" if n > 1 else ""))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _fmt(ms: Optional[Dict], digits: int = 2, counts: bool = False) -> str:
    if not ms or ms["mean"] is None:
        return "n/a"
    if counts and all(float(v).is_integer() for v in ms["values"]) and len(set(ms["values"])) == 1:
        return str(int(ms["mean"]))  # counts (epochs, layers, routers) the same in every seed
    text = f"{ms['mean']:.{digits}f}"
    if ms["n"] > 1 and ms["std"] is not None:
        text += f" ± {ms['std']:.{digits}f}"
    return text


def _count(n: Optional[int]) -> str:
    return "n/a" if n is None else f"{n / 1e6:.2f} M ({n:,})"


def _duration(ms: Optional[Dict]) -> str:
    if not ms or ms["mean"] is None:
        return "n/a"
    scale, unit = (1, "s") if ms["mean"] < 120 else (60, "min")
    text = f"{ms['mean'] / scale:.1f}"
    if ms["n"] > 1 and ms["std"] is not None:
        text += f" ± {ms['std'] / scale:.1f}"
    return f"{text} {unit}"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> List[str]:
    return (["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
            + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows] + [""])


def _headline_names() -> Dict[str, str]:
    try:
        from espnet_omnirouter.analysis.report import HEADLINE

        return dict(HEADLINE)
    except Exception:
        return {}


def markdown(result: Dict) -> str:
    summ, labels, sets = result["summary"], result["labels"], result["sets"]
    models = [m for m in result["models"] if summ.get(m)]
    n_seeds = len(result["seeds"])
    digits = 1 if n_seeds == 1 else 2
    out = [f"# Quality: {' vs '.join(labels[m] for m in result['models'])}", ""]
    out.append("Generated by `benchmarks/quality_report.py` from the run's files (nothing typed by hand).")
    if result.get("command"):
        out.append(f"Command: `{result['command']}`.")
    out.append("")
    out.append(f"- seeds: {', '.join(str(s) for s in result['seeds'])}"
               + (" (values: mean ± sample standard deviation over seeds)" if n_seeds > 1
                  else " (one seed: no spread)"))
    data = result.get("data")
    if data:
        out.append(f"- training data: `{data['train_set']}`, {data['train_utts']:,} utterances, "
                   f"{data['train_hours']:.2f} h; test sets: "
                   + ", ".join(f"{s} ({n})" for s, n in data.get("test_utts", {}).items()) + " utterances")
    out.append(f"- decoding: `{', '.join(result['decode_tags'])}`; out-of-domain (OOD) sets: "
               f"{', '.join(result['ood_sets'])}; OOD avg = unweighted mean of the per-set values, OOD pooled = "
               "summed errors / summed reference units")
    out.append(f"- experiments: `{result['root']}/seed<S>/asr_<model>` (relative to the root of the checkout that ran them)")
    if result.get("reused"):
        ru = result["reused"]
        out.append(f"- **reused runs**: {', '.join(labels[m] for m in ru['models'])} from `{ru['from']}`"
                   + (f" (command: `{ru['command']}`)" if ru.get("command") else "")
                   + (f"; {ru['note']}" if ru.get("note") else ""))
    earlier = result.get("spread_from")
    if earlier:
        out.append(f"- seed spread for the verdict: from `{earlier['from']}` (seeds "
                   f"{', '.join(str(s) for s in earlier['seeds'])}), where this report has one seed")
    out += [f"- note: {note}" for note in result.get("notes", [])]
    if result["missing"]:
        out.append(f"- **missing runs** (left out of the means): {'; '.join(result['missing'])}")
    out += ["", "## Verdict", ""] + [f"- {line}" for line in result["verdict"]] + [""]
    check = (result.get("reused") or {}).get("check")
    if check:
        out += ["## Reuse check", "",
                f"The reused runs trained again with the current code and the same seed for a few epochs "
                f"(`{check['root']}`), ASR loss per epoch (reused / re-run):", ""]
        out += _table(["model", "seed", "epoch", "train ASR loss", "valid ASR loss", "epoch time"],
                      [[labels[r["model"]], str(r["seed"]), str(r["epoch"])]
                       + [f"{_fmt1(r[k]['reused'], 3)} / {_fmt1(r[k]['rerun'], 3)}"
                          for k in ("train_loss_asr", "valid_loss_asr")]
                       + [" / ".join(_duration({"mean": r["epoch_seconds"][k], "n": 1}) for k in ("reused", "rerun"))]
                       for r in check["rows"]])
        spread = ("" if check["seed_spread"] is None else
                  f"; the reused runs' seeds differ by up to {check['seed_spread']:.3f} at the same epochs")
        out += [f"Largest difference: {_fmt1(check['max_diff'], 3)}{spread}."
                + (f" Not checked: {'; '.join(check['unchecked'])}." if check["unchecked"] else ""), ""]

    for unit in ("wer", "cer"):
        out += [f"## {unit.upper()} (%)", ""]
        header = ["model"] + sets + ["OOD avg", "OOD pooled"]
        rows = [[labels[m]] + [_fmt(summ[m][unit][s], digits) for s in sets]
                + [_fmt(summ[m][f"{unit}_ood_avg"]), _fmt(summ[m][f"{unit}_ood_pooled"])] for m in models]
        out += _table(header, rows)
    out += ["## Relative change (%) of the mean, negative = fewer errors", ""]
    rel_rows = []
    for ref, per_model in result["relative"].items():
        for m, units in per_model.items():
            for unit in ("wer", "cer"):
                row = units[unit]
                rel_rows.append([labels[m], labels[ref], unit.upper()] + [_signed(row[s]) for s in sets]
                                + [_signed(row["ood_avg"]), _signed(row["ood_pooled"])])
    if rel_rows:
        out += _table(["model", "vs", "metric"] + sets + ["OOD avg", "OOD pooled"], rel_rows)
    else:
        out += ["(no reference model: relative changes need `dense` or `switch`)", ""]
    if result.get("streaming"):
        import quality_streaming

        out += quality_streaming.markdown(result)

    ctc = ctc_only(result)
    out += ["## Training", "", f"![loss curves]({result.get('name', 'quality')}_loss.png)", "",
            ("ASR loss = CTC loss (no attention decoder; " if ctc else "ASR loss = CTC + attention loss (")
            + "for MoE models `loss_asr`: their `loss` also holds the MoE "
            "auxiliary losses, shown in the `loss` columns). Final = last epoch. "
            + ("Valid CER = ESPnet's greedy-CTC `cer_ctc` of validation (the checkpoint criterion). " if ctc else "")
            + "Training time = sum of ESPnet's "
            "per-epoch `time=` of training and validation; log span = first to last timestamp of the train.log "
            "file(s) (includes start-up, checkpoint averaging).", ""]
    score = (("valid CER (CTC)", "best valid CER (CTC)", "valid_cer_ctc", "best_valid_cer_ctc") if ctc else
             ("valid acc", "best valid acc", "valid_acc", "best_valid_acc"))
    header = ["model", "epochs", "train ASR loss", "valid ASR loss", "train loss", "valid loss", score[0],
              score[1], "training time", "log span"]
    rows = []
    for m in models:
        f = summ[m]["final"]
        rows.append([labels[m], _fmt(f["epochs"], 1, counts=True), _fmt(f["train_loss_asr"]), _fmt(f["valid_loss_asr"]),
                     _fmt(f["train_loss"]), _fmt(f["valid_loss"]), _fmt(f.get(score[2]), 4),
                     _fmt(f.get(score[3]), 4), _duration(summ[m]["train_seconds"]),
                     _duration(summ[m]["log_span_seconds"])])
    out += _table(header, rows)

    out += ["## Parameters", "",
            "Active per frame: every MoE FFN counted with `top_k` of its experts (routers in full); dense = total.",
            ""]
    rows = []
    for m in models:
        p = summ[m]["params"] or {}
        moe = (f"{p['num_moe_ffns']} x {p['num_experts']} experts (top-{p['top_k']}), {p['num_routers']} router(s)"
               if p.get("num_moe_ffns") else "-")
        rows.append([labels[m], _count(p.get("total")), _count(p.get("active_per_frame")),
                     _count(p.get("encoder_total")), _count(p.get("encoder_active_per_frame")), moe,
                     _count(p.get("router_params")) if p.get("num_moe_ffns") else "-"])
    out += _table(["model", "total", "active per frame", "encoder total", "encoder active", "MoE FFNs",
                   "router params"], rows)

    moe_models = [m for m in models if summ[m]["routing"]]
    out += ["## Routing analysis (stage 10, `routing_analysis/summary.json`)", ""]
    if moe_models:
        names = _headline_names()
        keys = list(dict.fromkeys(k for m in moe_models for k in summ[m]["routing"]))
        rows = [[names.get(k, k), f"`{k}`"] + [_fmt(summ[m]["routing"].get(k), 4, counts=True) for m in moe_models]
                for k in keys]
        out += _table(["metric", "key"] + [labels[m] for m in moe_models], rows)
    else:
        out += ["(no routing analysis found)", ""]

    if n_seeds > 1:
        out += ["## Per seed (WER %)", ""]
        rows = []
        for s in result["seeds"]:
            for m in result["models"]:
                r = result["runs"][str(s)].get(m)
                if r:
                    rows.append([str(s), labels[m]] + [_fmt1(r["wer"].get(s2)) for s2 in sets]
                                + [_fmt1(r["wer_ood_avg"], 2)])
        out += _table(["seed", "model"] + sets + ["OOD avg"], rows)
    out += ["## Sources", ""]
    for s in result["seeds"]:
        for m in result["models"]:
            r = result["runs"][str(s)].get(m)
            if r:
                logs = ", ".join(f"`{os.path.basename(p)}`" for p in r["train_logs"])
                out.append(f"- seed {s}, {m}: `{r['exp']}` (scores: `{r['decode_tag']}/<set>/score_{{wer,cer}}/"
                           f"summary.json`; logs: {logs})")
    return "\n".join(out) + "\n"


def _fmt1(x, digits=1):
    return "n/a" if x is None else f"{x:.{digits}f}"


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
