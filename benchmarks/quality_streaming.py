"""Streaming vs full-utterance decoding in a quality report (``quality.sh --streaming_decode true``).

The same runs decoded twice: in full (the report's decode tag) and chunk by chunk by ESPnet's
``asr_inference_streaming`` (``--streaming_tag``, e.g. ``decode_asr_streaming``).  The streaming
scores are collected exactly like the full ones (:func:`quality_report.collect`), so the models'
summaries, their relative changes and the seed-spread yardstick have one implementation; this module
only sets the two decodings side by side:

  * ``result["streaming"]["change"][model][unit][set | "ood_avg"]``: ``{"full", "streaming",
    "change"}`` with ``change = 100 * (streaming - full) / full`` (percent, positive = more errors
    when streaming)
  * ``result["streaming"]["relative"]``: model vs reference in streaming decoding (as ``relative``)
"""
from typing import Dict, List

import quality_report as qr
import quality_markdown as qmd
import quality_runs as qruns
import quality_stats as qstats


def collect_streaming(result: Dict, root: str, tag: str) -> Dict:
    """The streaming decoding ``tag`` of the runs of ``result`` (:func:`quality_report.collect`)."""
    reused = (result.get("reused") or {}).get("models", [])
    models = [m for m in result["models"] if m not in reused]
    other = qr.collect(root, models, result["seeds"], tag, result["ood_sets"],
                       spread_from=result.get("spread_from"))
    if other["sets"] != result["sets"]:
        raise ValueError(f"streaming decode dirs '{tag}' score the sets {other['sets']}, the full decoding "
                         f"{result['sets']}: decode the same test sets")
    change = {}
    for m in models:
        full, stream = result["summary"].get(m), other["summary"].get(m)
        if not full or not stream:
            continue
        change[m] = {}
        for unit in ("wer", "cer"):
            row = {s: (full[unit][s]["mean"], stream[unit][s]["mean"]) for s in result["sets"]}
            row["ood_avg"] = (full[f"{unit}_ood_avg"]["mean"], stream[f"{unit}_ood_avg"]["mean"])
            change[m][unit] = {k: {"full": a, "streaming": b, "change": qruns.rel_change(b, a)}
                               for k, (a, b) in row.items()}
    return {"decode_tag": tag, "models": models, "summary": other["summary"], "relative": other["relative"],
            "change": change, "missing": other["missing"]}


def verdict(result: Dict) -> List[str]:
    """Sentences: what streaming costs each model, and the models compared in streaming decoding."""
    st, labels, lines = result["streaming"], result["labels"], []
    first = result["sets"][0] if result["sets"] else None
    for m, units in st["change"].items():
        w = units["wer"]
        parts = [f"{k if k != 'ood_avg' else 'out-of-domain average'} WER {qstats._pct(w[k]['streaming'])} vs "
                 f"{qstats._pct(w[k]['full'])} ({qstats._signed(w[k]['change'])} relative)"
                 for k in (first, "ood_avg") if k is not None and w[k]["full"] is not None]
        lines.append(f"Streaming vs full-utterance decoding, {labels[m]}: " + "; ".join(parts))
    judged = {"summary": st["summary"], "spread_from": result.get("spread_from")}
    for ref, per_model in st["relative"].items():
        for m in per_model:
            for column in ([first] if first else []) + ["ood_avg"]:
                lines.append("In streaming decoding, " + qstats.compare_sentence(judged, m, ref, "wer", column))
    return lines


def markdown(result: Dict) -> List[str]:
    """The report's section: per model its full and streaming WER/CER and the change."""
    st, labels, sets = result["streaming"], result["labels"], result["sets"]
    out = [f"## Streaming vs full-utterance decoding (`{st['decode_tag']}`)", "",
           "The same checkpoints decoded chunk by chunk by ESPnet's `asr_inference_streaming` (batch 1; "
           "the encoder sees one block at a time, as in a live stream) and in full. Change = relative change "
           "of the streaming value, positive = more errors when streaming.", ""]
    for unit in ("wer", "cer"):
        rows = []
        for m, units in st["change"].items():
            row = units[unit]
            keys = sets + ["ood_avg"]
            rows.append([labels[m], "full"] + [qmd._fmt1(row[k]["full"], 2) for k in keys])
            rows.append([labels[m], "streaming"] + [qmd._fmt1(row[k]["streaming"], 2) for k in keys])
            rows.append([labels[m], "change"] + [qstats._signed(row[k]["change"]) for k in keys])
        out += [f"{unit.upper()} (%):", ""] + qmd._table(["model", "decoding"] + sets + ["OOD avg"], rows)
    if st["missing"]:
        out += [f"Missing streaming runs: {'; '.join(st['missing'])}.", ""]
    return out
