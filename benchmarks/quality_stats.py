"""The quality benchmark's statistics over seeds and the sentences that judge a difference against
the seed spread (see quality_report.py for the conventions)."""
import json
import os
from typing import Dict, List, Optional, Sequence, Tuple

from quality_runs import PAIRS, REFERENCES, SHORT, mean_std, rel_change

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
