"""Run the routing analysis and write its figures, JSON files and ``summary.md``.

    >>> from espnet_omnirouter.analysis import analyze
    >>> summary = analyze("exp/asr_omni/asr_model.zip", ["dump/raw/test_clean", "dump/raw/test_other"],
    ...                   "exp/asr_omni/routing_analysis", max_utts=500)
"""
import json
import logging
import os
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Union

import numpy as np

from espnet_omnirouter.analysis import metrics, plots
from espnet_omnirouter.analysis.data import data_name
from espnet_omnirouter.analysis.record import RoutingRecord, record_routing

logger = logging.getLogger(__name__)

NMI_NORMALISATION = "I(X_i; X_j) / sqrt(H(X_i) H(X_j)) (geometric mean of the entropies), natural log"
V_DEFINITION = "sqrt(chi2 / (n (min(r, c) - 1))) over the r x c table of the experts that occur, no bias correction"
DEGENERATE = (
    "a layer that uses a single expert has entropy 0; its Cramer's V and NMI with every layer (itself included) "
    "are defined as 0; a switch rate without consecutive frames is 0; means over no layer pairs are null"
)

# Scalars that summarise a model, in table order: (key, description).
HEADLINE = [
    ("num_layers", "MoE layers"),
    ("num_experts", "experts per layer"),
    ("num_routers", "router modules"),
    ("num_utts", "utterances"),
    ("num_frames", "encoder frames"),
    ("usage_normalised_entropy_mean", "usage entropy / log E, mean over layers"),
    ("usage_max_fraction_mean", "largest expert's share of frames, mean over layers"),
    ("unused_experts_mean", "unused experts per layer, mean"),
    ("gate_mean", "gate of the first choice (its router probability), mean over frames and layers"),
    ("cramers_v_mean", "Cramer's V, mean over layer pairs"),
    ("cramers_v_adjacent_mean", "Cramer's V, mean over consecutive layers"),
    ("cramers_v_chance_mean", "Cramer's V of independent frames, mean over pairs"),
    ("nmi_mean", "NMI, mean over layer pairs"),
    ("nmi_adjacent_mean", "NMI, mean over consecutive layers"),
    ("nmi_chance_mean", "NMI of independent frames, mean over pairs"),
    ("agreement_mean", "same expert index, mean over pairs sharing a router"),
    ("agreement_chance_mean", "same index by chance (sum_e p_i p_j), same pairs"),
    ("switch_rate_mean", "switch rate, mean over layers"),
    ("switch_rate_shuffled_mean", "switch rate with frames shuffled, mean over layers"),
    ("segment_length_mean", "mean segment length (frames), mean over layers"),
    ("segment_length_shuffled_mean", "mean segment length with frames shuffled, mean over layers"),
    ("sets_jsd_mean", "JSD (bits) of usage between data sets, mean over layers and pairs"),
]

FIGURES = {
    "usage.png": "fraction of frames each expert receives in each MoE layer (heatmap), with each layer's usage "
    "entropy relative to log E and its number of unused experts.",
    "layer_dependence.png": "Cramer's V and NMI between every pair of layers' expert choices (relabelling-invariant: "
    "0 = independent choices, 1 = one layer's choice determines the other's){agreement}.",
    "segments.png": "per layer, how often the expert changes between consecutive frames and how long runs of one "
    "expert last, beside the same utterances with their frames shuffled; below, the experts of utterance "
    "{example} over time, one row per layer.",
    "sets.png": "expert usage per data set and the Jensen-Shannon divergence between the sets' usage in each layer.",
}


def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if isinstance(obj, (np.bool_,)):
        return bool(obj)
    return obj


def write_json(obj, path: str) -> None:
    """Write ``obj`` as JSON; NaN or infinity is an error (``allow_nan=False``)."""
    with open(path, "w", encoding="utf-8") as f:
        json.dump(_jsonable(obj), f, indent=1, allow_nan=False)
        f.write("\n")


def _mean(values) -> Optional[float]:
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def _unique_names(records: Sequence[RoutingRecord]) -> List[str]:
    names, seen = [], {}
    for rec in records:
        base = rec.name or "data"
        seen[base] = seen.get(base, 0) + 1
        names.append(base if seen[base] == 1 else f"{base}_{seen[base]}")
    return names


def compute(records: Sequence[RoutingRecord], seed: int = 0, example_utt: Optional[str] = None) -> Dict:
    """All numbers of the analysis from recorded routings (no files written).

    Usage, layer dependence and segments are computed on the utterances of all records
    together; ``sets`` (None for one record) compares the records.
    """
    if not records:
        raise ValueError("no routing records")
    names = _unique_names(records)
    pooled = RoutingRecord.concat(records)
    if pooled.num_frames == 0:
        raise ValueError("the records hold no frames")
    x = pooled.frames()
    layers = list(pooled.layer_names)
    num_layers, num_experts = pooled.num_layers, pooled.num_experts

    usage = {"layers": layers, **metrics.usage_summary(x, num_experts)}
    gates = pooled.frame_gates()
    # How confident the routers are: 1/E for a router that cannot tell experts apart, 1 for hard choices.
    usage["gate_mean"] = None if gates is None else gates.mean(axis=0).tolist()

    dep = {
        "layers": layers,
        "nmi_normalisation": NMI_NORMALISATION,
        "cramers_v_definition": V_DEFINITION,
        "degenerate_cases": DEGENERATE,
        "shared_router": pooled.shared_router,
        "router_ids": list(pooled.router_ids),
        **metrics.dependence_matrices(x),
    }
    same_router = np.equal.outer(pooled.router_ids, pooled.router_ids)
    if pooled.shared_router:
        dep.update(metrics.agreement_matrices(x, num_experts))
        dep["agreement_note"] = (
            "raw expert-index agreement; comparable across layers only where they share a router "
            "(router_ids equal); chance = sum_e p_i(e) p_j(e)"
        )

    seg = {"layers": layers, **metrics.segment_summary(pooled.experts, seed=seed)}
    lengths = pooled.lengths
    if example_utt is None:
        example_index = int(np.argmax(lengths))
    elif example_utt in pooled.utt_ids:
        example_index = pooled.utt_ids.index(example_utt)
    else:
        raise KeyError(f"example utterance {example_utt!r} is not in the data")
    set_of_utt = [n for n, rec in zip(names, records) for _ in rec.utt_ids]
    seg["example"] = {
        "utt_id": pooled.utt_ids[example_index],
        "set": set_of_utt[example_index],
        "num_frames": int(lengths[example_index]),
        "experts": pooled.experts[example_index].tolist(),
    }

    sets = None
    if len(records) > 1:
        fracs = {n: metrics.usage_fractions(rec.frames(), num_experts) for n, rec in zip(names, records)}
        pairs = []
        for i in range(len(names)):
            for j in range(i + 1, len(names)):
                jsd = metrics.jensen_shannon(fracs[names[i]], fracs[names[j]], axis=1)
                pairs.append({"a": names[i], "b": names[j], "jsd": jsd.tolist(), "mean_jsd": float(jsd.mean())})
        sets = {
            "layers": layers,
            "sets": names,
            "jsd_units": "bits (log base 2), in [0, 1]",
            "num_utts": {n: rec.num_utts for n, rec in zip(names, records)},
            "num_frames": {n: rec.num_frames for n, rec in zip(names, records)},
            "usage": {n: f.tolist() for n, f in fracs.items()},
            "normalised_entropy": {
                n: metrics.usage_summary(rec.frames(), num_experts)["normalised_entropy"]
                for n, rec in zip(names, records)
            },
            "pairs": pairs,
        }

    agree_mask = same_router if pooled.shared_router else np.zeros_like(same_router)
    headline = {
        "num_layers": num_layers,
        "num_experts": num_experts,
        "num_routers": len(set(pooled.router_ids)),
        "num_utts": pooled.num_utts,
        "num_frames": pooled.num_frames,
        "usage_normalised_entropy_mean": _mean(usage["normalised_entropy"]),
        "usage_max_fraction_mean": _mean(usage["max_fraction"]),
        "unused_experts_mean": _mean(usage["num_unused"]),
        "gate_mean": None if gates is None else float(gates.mean()),
        "cramers_v_mean": metrics.offdiag_mean(dep["cramers_v"]),
        "cramers_v_adjacent_mean": metrics.adjacent_mean(dep["cramers_v"]),
        "cramers_v_chance_mean": metrics.offdiag_mean(dep["cramers_v_chance"]),
        "nmi_mean": metrics.offdiag_mean(dep["nmi"]),
        "nmi_adjacent_mean": metrics.adjacent_mean(dep["nmi"]),
        "nmi_chance_mean": metrics.offdiag_mean(dep["nmi_chance"]),
        "agreement_mean": metrics.offdiag_mean(dep["agreement"], agree_mask) if "agreement" in dep else None,
        "agreement_chance_mean": (
            metrics.offdiag_mean(dep["agreement_chance"], agree_mask) if "agreement" in dep else None
        ),
        "switch_rate_mean": _mean(seg["switch_rate"]),
        "switch_rate_shuffled_mean": _mean(seg["switch_rate_shuffled"]),
        "segment_length_mean": _mean(seg["mean_segment_length"]),
        "segment_length_shuffled_mean": _mean(seg["mean_segment_length_shuffled"]),
        "sets_jsd_mean": _mean([p["mean_jsd"] for p in sets["pairs"]]) if sets else None,
    }
    data = [
        {"name": n, "num_utts": rec.num_utts, "num_frames": rec.num_frames, "sample_rate": rec.sample_rate}
        for n, rec in zip(names, records)
    ]
    return {
        "data": data,
        "headline": headline,
        "usage": usage,
        "layer_dependence": dep,
        "segments": seg,
        "sets": sets,
    }


# ----------------------------------------------------------------------------- markdown
def _fmt(v, digits: int = 4) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, (bool, np.bool_)):
        return str(bool(v))
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        return f"{v:.{digits}f}"
    if isinstance(v, (list, tuple)):
        return ", ".join(str(e) for e in v) if v else "-"
    return str(v)


def _table(header: Sequence[str], rows: Sequence[Sequence]) -> List[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(_fmt(c) for c in row) + " |" for row in rows]
    return lines + [""]


def _matrix_table(m, labels) -> List[str]:
    return _table([""] + list(labels), [[labels[i]] + list(row) for i, row in enumerate(m)])


def summary_markdown(summary: Dict) -> str:
    """``summary.md`` text for a summary dict (see :func:`analyze_records`)."""
    model, head = summary.get("model", {}), summary["headline"]
    usage, dep, seg, sets = summary["usage"], summary["layer_dependence"], summary["segments"], summary["sets"]
    layers = usage["layers"]
    short = plots.short_layer_names(layers)
    out = [f"# Routing analysis: {model.get('label', 'model')}", ""]
    if model:
        out += [
            f"- model: `{model.get('path', '')}` ({model.get('encoder', '')}, "
            f"{'shared router' if dep['shared_router'] else 'one router per layer'}, "
            f"{head['num_routers']} router module(s), top_k {model.get('top_k', 1)}; first choices analysed)",
        ]
    out += [
        f"- {head['num_layers']} MoE layers x {head['num_experts']} experts; "
        f"{head['num_utts']} utterances, {head['num_frames']} encoder frames (padding excluded)",
        f"- layer labels: `3m` = block 3's macaron FFN, `3` = block 3's FFN",
        "",
        "## Data",
        "",
    ]
    out += _table(
        ["set", "path", "utterances", "frames"],
        [[d["name"], d.get("path", ""), d["num_utts"], d["num_frames"]] for d in summary["data"]],
    )
    out += ["## Figures", ""]
    for name, line in summary["figures"].items():
        out.append(f"- `{name}`: {line}")
    out += ["", "## Headline numbers", ""]
    out += _table(["metric", "value"], [[desc, head.get(key)] for key, desc in HEADLINE])

    out += ["## Expert usage (`usage.json`)", ""]
    out += _table(
        ["layer", "module", "entropy (nats)", "entropy / log E", "max fraction", "unused experts", "mean gate"],
        [
            [short[l], layers[l], usage["entropy"][l], usage["normalised_entropy"][l], usage["max_fraction"][l],
             usage["unused_experts"][l], (usage.get("gate_mean") or [None] * len(layers))[l]]
            for l in range(len(layers))
        ],
    )

    out += [
        "## Layer dependence (`layer_dependence.json`)",
        "",
        f"Cramer's V = {V_DEFINITION}. NMI = {NMI_NORMALISATION}. Both are invariant to relabelling the "
        "experts, so Switch layers (private routers) and Omni layers (one router) compare fairly. "
        f"Chance levels assume independent frames: V ~ sqrt((r-1)(c-1)/(n(min(r,c)-1))), NMI ~ "
        f"(r-1)(c-1)/(2n)/sqrt(H_i H_j). Degenerate cases: {DEGENERATE}.",
        "",
    ]
    n = len(layers)
    rows = []
    for l in range(n):
        others = [j for j in range(n) if j != l]
        row = [
            short[l],
            dep["cramers_v"][l][l + 1] if l + 1 < n else None,
            dep["nmi"][l][l + 1] if l + 1 < n else None,
            _mean([dep["cramers_v"][l][j] for j in others]),
            _mean([dep["nmi"][l][j] for j in others]),
        ]
        if "agreement" in dep:
            row += [dep["agreement"][l][l + 1] if l + 1 < n else None,
                    dep["agreement_chance"][l][l + 1] if l + 1 < n else None]
        rows.append(row)
    header = ["layer", "V with next", "NMI with next", "mean V to others", "mean NMI to others"]
    if "agreement" in dep:
        header += ["agreement with next", "chance"]
    out += _table(header, rows)
    if n <= 16:
        out += ["Cramer's V:", ""] + _matrix_table(dep["cramers_v"], short)
        out += ["NMI:", ""] + _matrix_table(dep["nmi"], short)
        if "agreement" in dep:
            out += ["Index agreement:", ""] + _matrix_table(dep["agreement"], short)
    else:
        out += ["Full matrices: `layer_dependence.json`.", ""]

    out += [
        "## Temporal segments (`segments.json`)",
        "",
        f"Baseline: frames shuffled within each utterance (seed {seg['seed']}, "
        f"mean of {seg['num_shuffles']} shuffles).",
        "",
    ]
    out += _table(
        ["layer", "switch rate", "shuffled", "mean segment length", "shuffled"],
        [
            [short[l], seg["switch_rate"][l], seg["switch_rate_shuffled"][l], seg["mean_segment_length"][l],
             seg["mean_segment_length_shuffled"][l]]
            for l in range(n)
        ],
    )
    if sets:
        out += ["## Data sets (`sets.json`)", "", f"Jensen-Shannon divergence of usage, {sets['jsd_units']}.", ""]
        header = ["layer"] + [f"entropy/logE {s}" for s in sets["sets"]]
        header += [f"JSD {p['a']} vs {p['b']}" for p in sets["pairs"]]
        rows = [
            [short[l]] + [sets["normalised_entropy"][s][l] for s in sets["sets"]] + [p["jsd"][l] for p in sets["pairs"]]
            for l in range(n)
        ]
        out += _table(header, rows)
    if summary.get("compare"):
        cmp = summary["compare"]
        out += ["## Comparison", "", f"Other model: `{cmp['other_path']}`.", ""]
        out += _table(["metric", f"this model ({cmp['this_label']})", f"other model ({cmp['other_label']})"],
                      [[r["metric"], r["this"], r["other"]] for r in cmp["rows"]])
    return "\n".join(out) + "\n"


def compare_summaries(this: Dict, other: Dict, other_path: str = "") -> Dict:
    """Rows ``{metric, key, this, other}`` of the headline numbers of two summaries."""
    a, b = this["headline"], other.get("headline", {})
    rows = [{"metric": desc, "key": key, "this": a.get(key), "other": b.get(key)} for key, desc in HEADLINE]
    return {
        "other_path": other_path,
        "this_label": this.get("model", {}).get("label", "this"),
        "other_label": other.get("model", {}).get("label", "other"),
        "rows": rows,
    }


# ----------------------------------------------------------------------------- entry points
def analyze_records(
    records: Union[Sequence[RoutingRecord], Mapping[str, RoutingRecord]],
    out_dir: str,
    compare: Optional[str] = None,
    seed: int = 0,
    model_info: Optional[Dict] = None,
    example_utt: Optional[str] = None,
    data_paths: Optional[Sequence[str]] = None,
    save_routing: bool = True,
) -> Dict:
    """Write the analysis of recorded routings to ``out_dir`` and return ``summary``.

    Files: ``usage.{png,json}``, ``layer_dependence.{png,json}``, ``segments.{png,json}``,
    ``sets.{png,json}`` (several records only), ``summary.md``, ``summary.json`` and, with
    ``save_routing``, ``routing/<set>.npz`` (:meth:`RoutingRecord.load` reads them).

    Args:
        records: one record per data set (a mapping renames them by its keys).
        compare: another model's ``summary.json``: its headline numbers go beside ours.
        seed: seed of the time-shuffled baseline.
        model_info: free-form description of the model (``label``, ``path``, ``encoder``, ...).
        example_utt: utterance drawn in ``segments.png`` (default: the longest).
        data_paths: where each record's data came from (for the summary).
    """
    if isinstance(records, Mapping):
        renamed = []
        for name, rec in records.items():
            rec = RoutingRecord(**{**rec.__dict__, "name": name})
            renamed.append(rec)
        records = renamed
    records = list(records)
    os.makedirs(out_dir, exist_ok=True)
    summary = compute(records, seed=seed, example_utt=example_utt)
    info = dict(model_info or {})
    info.setdefault("label", "model")
    info.setdefault("top_k", records[0].top_k)
    summary = {"model": info, **summary}
    for d, path in zip(summary["data"], data_paths or []):
        d["path"] = str(path)
    layers = summary["usage"]["layers"]
    label = info["label"]

    write_json(summary["usage"], os.path.join(out_dir, "usage.json"))
    plots.plot_usage(summary["usage"], layers, os.path.join(out_dir, "usage.png"), f"Expert usage: {label}")
    write_json(summary["layer_dependence"], os.path.join(out_dir, "layer_dependence.json"))
    plots.plot_layer_dependence(
        summary["layer_dependence"], layers, os.path.join(out_dir, "layer_dependence.png"),
        f"Dependence between layers' expert choices: {label}",
    )
    write_json(summary["segments"], os.path.join(out_dir, "segments.json"))
    example = summary["segments"]["example"]
    plots.plot_segments(
        summary["segments"], np.asarray(example["experts"]), f"{example['set']}/{example['utt_id']}", layers,
        summary["headline"]["num_experts"], os.path.join(out_dir, "segments.png"), f"Temporal consistency: {label}",
    )
    figures = {
        "usage.png": FIGURES["usage.png"],
        "layer_dependence.png": FIGURES["layer_dependence.png"].format(
            agreement="; with a shared router also the fraction of frames given the same expert index and its "
            "chance level sum_e p_i(e) p_j(e)" if "agreement" in summary["layer_dependence"] else ""
        ),
        "segments.png": FIGURES["segments.png"].format(example=f"{example['set']}/{example['utt_id']}"),
    }
    if summary["sets"]:
        write_json(summary["sets"], os.path.join(out_dir, "sets.json"))
        plots.plot_sets(
            summary["sets"], layers, os.path.join(out_dir, "sets.png"), f"Expert usage per data set: {label}"
        )
        figures["sets.png"] = FIGURES["sets.png"]
    summary["figures"] = figures
    if compare:
        with open(compare, encoding="utf-8") as f:
            other = json.load(f)
        summary["compare"] = compare_summaries(summary, other, str(compare))
    if save_routing:
        os.makedirs(os.path.join(out_dir, "routing"), exist_ok=True)
        for d, rec in zip(summary["data"], records):
            rec.save(os.path.join(out_dir, "routing", f"{d['name']}.npz"))
    write_json(summary, os.path.join(out_dir, "summary.json"))
    with open(os.path.join(out_dir, "summary.md"), "w", encoding="utf-8") as f:
        f.write(summary_markdown(summary))
    return summary


def _model_label(path: str) -> str:
    p = Path(path.rstrip("/"))
    return p.stem if p.is_file() else p.name


def _expected_fs(train_args) -> Optional[int]:
    conf = getattr(train_args, "frontend_conf", None) or {}
    fs = conf.get("fs", 16000) if getattr(train_args, "frontend", "default") == "default" else conf.get("fs")
    if fs is None:
        return None
    try:
        import humanfriendly

        return int(humanfriendly.parse_size(str(fs))) if isinstance(fs, str) else int(fs)
    except Exception:  # noqa: BLE001
        return None


def analyze(
    model,
    data: Union[str, Sequence[str], Mapping[str, object]],
    out_dir: str,
    compare: Optional[str] = None,
    max_utts: Optional[int] = None,
    batch_size: int = 1,
    device: str = "cpu",
    seed: int = 0,
    example_utt: Optional[str] = None,
    label: Optional[str] = None,
    train_args=None,
) -> Dict:
    """Record the routing of ``model`` on each data set and write the analysis (see
    :func:`analyze_records`).

    Args:
        model: a packed zip, unpacked pack or experiment directory (loaded with
            :func:`espnet_omnirouter.hub.load_asr_model`), or a loaded ASR model.
        data: a data dir / ``wav.scp`` path, a list of them (each set is named after its
            directory) or ``{name: path or waveforms}``.
        max_utts: per data set, only the first ``max_utts`` utterances.
        batch_size, device: see :func:`record_routing`.
        label: the model's name in the summary (default: the model path's basename).
    """
    path = None
    if isinstance(model, (str, os.PathLike)):
        from espnet_omnirouter.hub import load_asr_model

        path = str(model)
        model, train_args = load_asr_model(path, device=device)
    if isinstance(data, (str, os.PathLike)):
        data = [data]
    items = list(data.items()) if isinstance(data, Mapping) else [(data_name(d), d) for d in data]
    records = []
    for name, d in items:
        logger.info("recording routing on %s (%s)", name, d)
        records.append(record_routing(model, d, name=name, max_utts=max_utts, batch_size=batch_size, device=device))
    fs = _expected_fs(train_args) if train_args is not None else None
    for rec in records:
        if fs and rec.sample_rate and rec.sample_rate != fs:
            logger.warning("%s: audio at %d Hz but the model's frontend expects %d Hz", rec.name, rec.sample_rate, fs)
    encoder = model.encoder
    info = {
        "label": label or (_model_label(path) if path else type(model).__name__),
        "path": path or "",
        "encoder": type(encoder).__name__,
        "encoder_type": getattr(train_args, "encoder", None) if train_args is not None else None,
        "top_k": records[0].top_k,
        "batch_size": batch_size,
        "max_utts": max_utts,
    }
    data_paths = [d if isinstance(d, (str, os.PathLike)) else "(in memory)" for _, d in items]
    return analyze_records(
        records, out_dir, compare=compare, seed=seed, model_info=info, example_utt=example_utt, data_paths=data_paths
    )
