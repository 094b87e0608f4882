"""The quality benchmark's reading of one run: ESPnet's train.log, the scored decodings, parameter
counts, routing summaries and the encoder of an experiment directory (see quality_report.py)."""
import datetime
import glob
import json
import math
import os
import re
import sys
from typing import Dict, List, Optional, Sequence

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
