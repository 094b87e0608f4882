"""Report writing shared by the studies: Markdown tables of the results, paths written relative
to the checkout, JSON and Markdown files (no torch: report scripts import it too)."""
import json
import os
import re
from typing import Dict

# An absolute path into a checkout, up to the checkout's top-level directory: /tmp/q7/egs2/... -> egs2/...
_CHECKOUT_PREFIX = re.compile(r"(?<![\w.])/(?:[^\s`'\"/]+/)+?(?=(?:egs2|benchmarks|conf)/)")


def _map_strings(fn, value):
    """``value`` (a string, or lists/dicts of them) with ``fn`` applied to every string."""
    if isinstance(value, str):
        return fn(value)
    if isinstance(value, list):
        return [_map_strings(fn, v) for v in value]
    if isinstance(value, dict):
        return {k: _map_strings(fn, v) for k, v in value.items()}
    return value


def checkout_relative(value):
    """``value`` (a string, or lists/dicts of them) with every absolute path into a checkout cut to
    the part from the checkout's top-level directory on (``/tmp/q7/egs2/synth_en/asr1/exp`` ->
    ``egs2/synth_en/asr1/exp``): relative to the repository root of the checkout the runs were in."""
    return _map_strings(lambda s: _CHECKOUT_PREFIX.sub("", s), value)


def _written_as(path: str, value):
    """``value`` with the output file's own absolute path (outside any checkout, e.g. a GPU
    machine's output folder) written as its file name."""
    name = os.path.basename(path) if os.path.isabs(path) else path
    return _map_strings(lambda s: name if s == path else s, value)


def write_json(path: str, payload: Dict[str, object]) -> None:
    """``payload`` to ``path`` (indent 1), paths into a checkout relative to its root."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(checkout_relative(_written_as(path, payload)), f, indent=1)
        f.write("\n")
    print(f"wrote {path}")


def write_json_and_report(path: str, payload: Dict[str, object], report: str) -> None:
    """``payload`` to the JSON file ``path`` and ``report`` (markdown) beside it, as ``<name>.md``
    (both with paths into a checkout relative to its root)."""
    write_json(path, payload)
    with open(os.path.splitext(path)[0] + ".md", "w") as f:
        f.write(checkout_relative(report))


def fmt_bytes(n):
    return f"{n / 2**20:.0f} MiB"


def stall(load):
    """Share of the timing during which some task waited for a CPU (other jobs), if known."""
    if not load or load.get("stall_pct") is None:
        return "-"
    return f"{load['stall_pct']:.0f}%"


def cell_time(case, v):
    r = case["variants"].get(v, {})
    if "skipped" in r:
        return r["skipped"]
    if "median_s" not in r:
        return "-"
    if v == "dense":
        return f"{r['median_s'] * 1e3:.1f} ms"
    return f"{r['median_s'] / case['variants']['dense']['median_s']:.2f}x"


def cell_mem(case, v):
    r = case["variants"].get(v, {})
    if "skipped" in r:
        return "skipped"
    if "peak_bytes" not in r:
        return "-"
    if v == "dense":
        return fmt_bytes(r["peak_bytes"])
    return f"{r['peak_bytes'] / case['variants']['dense']['peak_bytes']:.2f}x"


def cell_faults(case, v):
    faults = case["variants"].get(v, {}).get("minor_faults")
    return "-" if faults is None else f"{faults:.0f}"


def table(cases, variants, memory=True):
    """Markdown table: dense absolute, others as ratio to dense; loop/moe speed-up."""
    others = [v for v in variants if v != "dense"]
    head = ["d x h", "S", "E", "rounds", "dense time"] + [f"{v} time" for v in others]
    if "moe" in variants and "loop" in variants:
        head.append("loop/moe")
    if memory:
        head += ["dense mem"] + [f"{v} mem" for v in others]
    faults = any("minor_faults" in r for case in cases for r in case["variants"].values())
    if faults:
        head += [f"{v} faults" for v in variants]
    head.append("CPU stall")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for case in cases:
        row = [f"{case['d']}x{case['h']}", str(case["frames"]), str(case["experts"]), str(case.get("repeats", "-"))]
        row += [cell_time(case, "dense")] + [cell_time(case, v) for v in others]
        if "moe" in variants and "loop" in variants:
            loop, moe = case["variants"]["loop"], case["variants"]["moe"]
            row.append(f"{loop['median_s'] / moe['median_s']:.2f}x" if "median_s" in loop and "median_s" in moe else "-")
        if memory:
            row += [cell_mem(case, "dense")] + [cell_mem(case, v) for v in others]
        if faults:
            row += [cell_faults(case, v) for v in variants]
        row.append(stall(case.get("machine_load")))
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def encoder_table(results, memory=True):
    base = results["dense"]
    head = ["encoder", "params", "step time", "vs dense"] + (["peak mem", "vs dense"] if memory else [])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for k, r in results.items():
        row = [
            f"{k} ({r['encoder']})",
            f"{r['params'] / 1e6:.2f} M",
            f"{r['median_s'] * 1e3:.0f} ms",
            f"{r['median_s'] / base['median_s']:.2f}x",
        ]
        if memory:
            row += [fmt_bytes(r["peak_bytes"]), f"{r['peak_bytes'] / base['peak_bytes']:.2f}x"]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def op_count_table(results):
    """Markdown table of ``op_count.py``'s counts: kernels (vs dense) and host syncs per step."""
    head = ["step", "variant", "kernels", "vs dense", "host syncs (CUDA)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for group, rows in results.items():
        base = rows["dense"]["kernels"]
        for key, r in rows.items():
            syncs = ", ".join(f"{n} x{c}" for n, c in sorted(r["sync_ops"].items())) or "none"
            lines.append(
                f"| {group} | {key} | {r['kernels']} | {r['kernels'] / base:.2f}x | {r['syncs']}: {syncs} |"
            )
    return "\n".join(lines)


def infer_table(cases):
    """Markdown table of ``encoder_infer.py``'s cases: dense forward / greedy-CTC times in
    ms, every other variant as ratios to dense, the padded path's waste and (with Duo
    variants) each Duo policy's FFN compute relative to all-big.  A case timed in several runs
    (``--runs``) gives each ratio's worst run."""
    variants = list(cases[0]["variants"])
    moe = [v for v in variants if v != "dense"]
    padded = [v for v in moe if "pad_waste" in cases[0]["variants"][v]]
    duo = [v for v in moe if "duo_compute" in cases[0]["variants"][v]]
    head = ["batch x s", "enc. frames", "dense forward", "dense greedy"]
    runs = max(len(c.get("runs", [None])) for c in cases)
    head += [f"{v} forward / greedy" + (f" (worst of {runs} runs)" if runs > 1 else "") for v in moe]
    head += ["pad waste (" + ", ".join(padded) + ")"] if padded else []
    head += ["Duo compute (" + ", ".join(duo) + ")"] if duo else []
    head += ["CPU stall"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for case in cases:
        dense = case["variants"]["dense"]
        row = [f"{case['batch']} x {case['seconds']:g}", str(case.get("encoder_frames", "-"))]
        row += [f"{dense[s]['median_s'] * 1e3:.1f} ms" for s in ("forward", "greedy")]
        medians = [r["medians_s"] for r in case.get("runs", [])] or [
            {f"{v}/{s}": case["variants"][v][s]["median_s"] for v in variants for s in ("forward", "greedy")}]
        for v in moe:
            row.append(" / ".join(f"{max(m[f'{v}/{s}'] / m[f'dense/{s}'] for m in medians):.2f}x"
                                  for s in ("forward", "greedy")))
        row += [", ".join(f"{case['variants'][v]['pad_waste']:.2f}" for v in padded)] if padded else []
        row += [", ".join(f"{case['variants'][v]['duo_compute']:.2f}" for v in duo)] if duo else []
        row.append(stall(case.get("machine_load")))
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def decode_rtf_table(results):
    """Markdown table of ``decode_rtf.py``'s runs: RTF, ratio to the first run, WER."""
    base = next(iter(results.values()))
    lines = ["| run | RTF | vs " + next(iter(results)) + " | WER % | same words as |", "|---|---|---|---|---|"]
    for name, r in results.items():
        same = ", ".join(r["same_words_as"]) or "-"
        lines.append(f"| {name} | {r['rtf']:.3f} | {r['decode_s'] / base['decode_s']:.2f}x | {r['wer']:.1f} | {same} |")
    return "\n".join(lines)


def parts_table(cases, target):
    """Markdown table of the cases: per FFN, each part and the MoE extra against the budget."""
    head = ["batch x s", "encoder", "forward", "per FFN", "GEMMs", "rest", "router",
            "extra vs dense: GEMMs + rest", f"budget at {target:g}x"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    us = lambda s: f"{s * 1e6:.0f} us"  # noqa: E731
    for case in cases:
        d = case["encoders"]["dense"]
        for key, r in case["encoders"].items():
            row = [f"{case['batch']} x {case['seconds']:g}", key, f"{r['encoder_s'] * 1e3:.1f} ms",
                   us(r["ffn_s"]), us(r["gemm_s"]), us(r["rest_s"]),
                   us(r["router_s"]) if r.get("router_s") is not None else "-"]
            if key == "dense":
                row += ["-", us(case["budget_per_ffn_s"])]
            else:
                row += [f"{us(r['ffn_s'] - d['ffn_s'])} = {us(r['gemm_s'] - d['gemm_s'])} + "
                        f"{us(r['rest_s'] - d['rest_s'])}", us(case["budget_per_ffn_s"])]
            lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def rows_table(cases):
    """Markdown table of ``ffn_infer_rows.py``'s frame counts: the dense FFN's time, every MoE
    path as a ratio to it, the path "auto" took, and the experts' frame counts."""
    moe = [v for v in cases[0]["variants"] if v != "dense"]
    head = ["frames", "dense"] + moe + ["auto took", "frames per expert (min-max)", "CPU stall"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for case in cases:
        dense = case["variants"]["dense"]["median_s"]
        row = [str(case["frames"]), f"{dense * 1e6:.0f} us"]
        row += [f"{case['variants'][v]['median_s'] / dense:.2f}x" for v in moe]
        counts = case["expert_frames"]
        row += [case["auto_path"], f"{min(counts)}-{max(counts)}", stall(case.get("machine_load"))]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)
