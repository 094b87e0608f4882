"""Regenerate the tables of the speed reports from the JSON results.

Each report of :data:`REPORTS` (``benchmarks/results/<name>.md``) holds a hand-written part (how it was
measured, what it found) and, between the ``<!-- BEGIN GENERATED -->`` and ``<!-- END GENERATED -->``
markers, tables made here from the JSON files beside it (the GPU ones from :data:`GPU_DIR`); nothing
between the markers is typed by hand.

    python benchmarks/make_reports.py            # rewrites the reports' tables
    python benchmarks/make_reports.py --check    # exit status 1 if a report is not what its JSON makes

(About 500 lines: one section builder per kind of result of the four reports, kept together so that
every generated table of the speed studies is made in one place.)
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _report import decode_rtf_table, encoder_table, infer_table, parts_table, rows_table, stall, table  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
BEGIN, END = "<!-- BEGIN GENERATED -->", "<!-- END GENERATED -->"
# the CUDA results: borrowed H200s, November 2026 (no GPU since to run them again)
GPU_DIR = "gpu_h200_2026-11/"

# (JSON file, title); missing files are left out.
MOE_RUNS = [
    ("moe_ffn.json", "CPU"),
    ("moe_ffn_1thread.json", "CPU, 1 thread"),
    ("moe_ffn_impls.json", "CPU, our two expert implementations (`moe`: fused loop, the CPU default; `moe_gmm`: torch._grouped_mm)"),
    ("moe_ffn_page_faults.json", "CPU, page faults per step (glibc malloc as installed)"),
    ("moe_ffn_page_faults_no_mmap.json", "CPU, page faults per step, glibc's mmap off (`MALLOC_MMAP_MAX_=0`)"),
    (GPU_DIR + "moe_ffn_cuda_full.json", "CUDA, full grid, eager"),
    (GPU_DIR + "moe_ffn_cuda.json", "CUDA, gpu_check.sh's reduced grid, eager"),
    (GPU_DIR + "moe_ffn_cuda_large.json", "CUDA, 128k and 256k frames (GPU-bound), eager"),
    (GPU_DIR + "moe_ffn_cuda_compile.json", "CUDA, torch.compile (default mode)"),
    (GPU_DIR + "moe_ffn_cuda_cudagraphs.json", "CUDA, torch.compile mode=reduce-overhead (CUDA graphs)"),
]
# CUDA acceptance (issue: "at most 1.3x dense" in bf16): (JSON file, how the modules ran)
CUDA_ACCEPTANCE_RUNS = [
    (GPU_DIR + "moe_ffn_cuda_full.json", "eager"),
    (GPU_DIR + "moe_ffn_cuda_compile.json", "torch.compile"),
    (GPU_DIR + "moe_ffn_cuda_cudagraphs.json", "torch.compile, CUDA graphs"),
]
# Decoding-time encoder cost (encoder_infer.py) and end-to-end decoding (decode_rtf.py).
INFER_RUNS = [
    ("encoder_infer_trained.json", "CPU, trained encoders on real speech (`test_seen`)"),
    ("encoder_infer.json", "CPU, freshly initialised encoders on random features"),
    ("encoder_infer_duo.json", "CPU, Duo Conformer's fixed policies, freshly initialised, random features"),
]
PARTS_RUN = "encoder_ffn_parts.json"  # encoder_ffn_parts.py: the FFNs' share of encoder_infer.py's ratios
ROWS_RUN = "ffn_infer_rows.json"  # ffn_infer_rows.py: one FFN's inference paths by frame count
DECODE_RTF_RUNS = [("decode_rtf.json", "CPU, beam search with the character LM, batch 1")]
ENCODER_RUNS = [
    ("encoder_step.json", "CPU"),
    ("encoder_step_1thread.json", "CPU, 1 thread"),
    (GPU_DIR + "encoder_step_cuda.json", "CUDA"),
    (GPU_DIR + "encoder_step_cuda_b64.json", "CUDA, batch 64"),
    (GPU_DIR + "encoder_step_cuda_b256.json", "CUDA, batch 256"),
]
# CUDA eager runs of an earlier commit and of the current code, same grid (before, after).
BEFORE_AFTER_FFN = [
    (GPU_DIR + "moe_ffn_cuda_b8292a2.json", GPU_DIR + "moe_ffn_cuda.json"),
    (GPU_DIR + "moe_ffn_cuda_large_b8292a2.json", GPU_DIR + "moe_ffn_cuda_large.json"),
]
BEFORE_AFTER_ENCODER = [
    (GPU_DIR + "encoder_step_cuda_b8292a2.json", GPU_DIR + "encoder_step_cuda.json"),
    (GPU_DIR + "encoder_step_cuda_b64_b8292a2.json", GPU_DIR + "encoder_step_cuda_b64.json"),
    (GPU_DIR + "encoder_step_cuda_b256_b8292a2.json", GPU_DIR + "encoder_step_cuda_b256.json"),
]


def load(results_dir, name):
    path = os.path.join(results_dir, name)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def machine_line(run):
    m, c = run["machine"], run["config"]
    load = m.get("loadavg_at_start")
    parts = [
        f"`{m['device_name']}`",
        f"{m['cpu_cores']} cores" if m["device"] == "cpu" else f"{m['device']}, host CPU {m['cpu_model']}",
        f"torch {m['torch']}",
        f"{m['threads']} thread{'s' if m['threads'] != 1 else ''}",
        c.get("dtype", "fp32"),
    ]
    if "warmup" in c:
        parts.append(
            f"warm-up {c['warmup']}, median of "
            + (f"up to {c['repeats']} rounds (column `rounds`)" if "case_budget_s" in c else f"{c['repeats']} rounds")
        )
    parts += [
        f"measured {m['time']}" + (f" on commit {m['commit']}" if m.get("commit") else ""),
    ]
    if load:
        parts.append(f"load average at start {load[0]:.1f}")
    if m.get("env"):
        parts.append("environment " + " ".join(f"`{k}={v}`" for k, v in m["env"].items()))
    for update in c.get("updates", []):
        parts.append(
            f"{len(update['cases'])} case(s) measured again {update['time']}"
            + (f" (those timed with CPU stall > {update['redo_stalled']:g}%)" if update.get("redo_stalled") is not None else "")
        )
    return "Machine: " + " | ".join(parts)


def find_case(run, d, frames, experts):
    for case in run["cases"]:
        if (case["d"], case["frames"], case["experts"]) == (d, frames, experts):
            return case
    return None


def ratio(case, a, b="dense", key="median_s"):
    va, vb = case["variants"].get(a, {}), case["variants"].get(b, {})
    if key not in va or key not in vb:
        return None
    return va[key] / vb[key]


def check(label, value, target, load=None, better="lower", stall_column=True):
    """One acceptance row: ``| label | value | target | met? | CPU stall |`` (stall optional)."""
    if value is None:
        row = f"| {label} | not measured | {target} | - |"
    else:
        bound = float(target.split()[-1])
        ok = value <= bound if better == "lower" else value >= bound
        row = f"| {label} | {value:.2f}x | {target} | {'met' if ok else 'NOT met'} |"
    return row + (f" {stall(load)} |" if stall_column else "")


def acceptance(moe, enc):
    lines = ["| target | measured | wanted | | CPU stall |", "|---|---|---|---|---|"]
    if moe is not None:
        c8 = find_case(moe, 256, 8192, 8)
        c16 = find_case(moe, 256, 8192, 16)
        load8, load16 = (c and c.get("machine_load") for c in (c8, c16))
        lines.append(check("moe / dense time, d=256 h=1024 S=8k E=8", c8 and ratio(c8, "moe"), "<= 1.25", load8))
        lines.append(
            check("loop / moe time, d=256 h=1024 S=8k E=16", c16 and ratio(c16, "loop", "moe"), ">= 1.5", load16, "higher")
        )
        bound = c16 and ratio(c16, "loop", "matmuls")
        lines.append(
            f"| the most loop / moe can be: loop / expert matmuls alone, d=256 h=1024 S=8k E=16 | "
            f"{'%.2fx' % bound if bound else 'not measured'} | reported | | {stall(load16)} |"
        )
        g = c8 and ratio(c8, "gshard")
        lines.append(
            f"| gshard / dense time, d=256 h=1024 S=8k E=8 | {'%.2fx' % g if g else 'not measured'} | reported | "
            f"| {stall(load8)} |"
        )
        mem = [(ratio(c, "moe", key="peak_bytes"), c) for c in moe["cases"] if c["frames"] == 32768]
        mem = [(m, c) for m, c in mem if m is not None]
        worst = max(mem, key=lambda mc: mc[0]) if mem else (None, None)
        label = "moe / dense peak memory, S=32k, worst case"
        if worst[1] is not None:
            label += f" (d={worst[1]['d']} E={worst[1]['experts']})"
        lines.append(check(label, worst[0], "<= 1.5"))
    if enc is not None:
        r = enc["results"]
        for k in ("switch", "omni"):
            lines.append(
                check(
                    f"{k} / dense Conformer training step time",
                    r[k]["median_s"] / r["dense"]["median_s"], "<= 1.3", enc.get("machine_load"),
                )
            )
    return "\n".join(lines)


ACCEPTANCE_RUNS = [
    ("moe_ffn.json", "encoder_step.json", "all cores"),
    ("moe_ffn_1thread.json", "encoder_step_1thread.json", "1 thread"),
]


def commit(run):
    """The commit a run measured (recorded since b8292a2's benchmarks), or "-"."""
    return run["machine"].get("commit") or "-"


def cuda_acceptance(results_dir):
    """moe / dense time at the CPU target's case and the worst case of each CUDA run."""
    lines = ["| target | measured | wanted | | commit |", "|---|---|---|---|---|"]
    device = None
    for name, how in CUDA_ACCEPTANCE_RUNS:
        run = load(results_dir, name)
        if run is None:
            continue
        device = run["machine"]["device_name"]
        c8 = find_case(run, 256, 8192, 8)
        lines.append(check(f"moe / dense time, d=256 h=1024 S=8k E=8, {how}", c8 and ratio(c8, "moe"), "<= 1.3", stall_column=False) + f" {commit(run)} |")
        worst = max(
            ((ratio(c, "moe"), c) for c in run["cases"] if ratio(c, "moe") is not None),
            key=lambda rc: rc[0], default=(None, None),
        )
        if worst[1] is not None:
            c = worst[1]
            label = f"moe / dense time, worst of {len(run['cases'])} cases (d={c['d']} S={c['frames']} E={c['experts']}), {how}"
            lines.append(check(label, worst[0], "<= 1.3", stall_column=False) + f" {commit(run)} |")
    run = large = load(results_dir, GPU_DIR + "moe_ffn_cuda_large.json")
    if large is not None:
        for pick, word in ((min, "best"), (max, "worst")):
            r, c = pick((ratio(c, "moe"), c) for c in large["cases"])
            label = f"moe / dense time, {word} of {len(large['cases'])} GPU-bound cases (d={c['d']} S={c['frames']} E={c['experts']}), eager"
            lines.append(check(label, r, "<= 1.3", stall_column=False) + f" {commit(run)} |")
    for name in (GPU_DIR + "encoder_step_cuda.json", GPU_DIR + "encoder_step_cuda_b64.json", GPU_DIR + "encoder_step_cuda_b256.json"):
        run = enc = load(results_dir, name)
        if enc is None:
            continue
        device = device or enc["machine"]["device_name"]
        r = enc["results"]
        for k in ("switch", "omni"):
            label = f"{k} / dense Conformer training step time, batch {enc['config']['batch']}, eager"
            lines.append(check(label, r[k]["median_s"] / r["dense"]["median_s"], "<= 1.3", stall_column=False) + f" {commit(run)} |")
    if device is None:
        return ""
    return f"### Acceptance, CUDA bf16 (`{device}`)\n\n" + "\n".join(lines) + "\n"


# op_count.py runs: the current code, and an earlier code; with the CUDA eager runs of each
# (moe_ffn JSON, encoder_step JSON).
OP_COUNT_NOW, OP_COUNT_TIMED = "op_count.json", GPU_DIR + "op_count_87ea7b9.json"
OP_COUNT_CUDA = {
    OP_COUNT_NOW: (GPU_DIR + "moe_ffn_cuda.json", GPU_DIR + "encoder_step_cuda.json"),
    OP_COUNT_TIMED: (GPU_DIR + "moe_ffn_cuda_full_87ea7b9.json", GPU_DIR + "encoder_step_cuda_87ea7b9.json"),
}


def _cuda_eager_ratios(results_dir, counts_name):
    """CUDA eager time / dense of the FFN (range over the E=8, S=8k/32k cases) and of the
    encoders (batch 8), from the GPU runs of the code that ``counts_name`` counted."""
    out = {}
    moe_name, enc_name = OP_COUNT_CUDA[counts_name]
    run = load(results_dir, moe_name)
    if run is not None:
        rs = [ratio(c, "moe") for c in run["cases"] if c["experts"] == 8 and c["frames"] in (8192, 32768)]
        rs = [r for r in rs if r is not None]
        if rs:
            out[("ffn", "moe")] = f"{min(rs):.2f}-{max(rs):.2f}x"
    enc = load(results_dir, enc_name)
    if enc is not None:
        r = enc["results"]
        for k in ("switch", "omni"):
            out[("encoder", k)] = f"{r[k]['median_s'] / r['dense']['median_s']:.2f}x"
    return out


def op_count_section(results_dir):
    """Kernel and host-sync counts now and in the GPU-timed code, with the GPU's eager ratios."""
    now, timed = load(results_dir, OP_COUNT_NOW), load(results_dir, OP_COUNT_TIMED)
    if now is None:
        return ""
    tag = timed["config"]["commit"] if timed else None
    head = ["step", "variant"]
    if timed:
        head += [f"kernels vs dense, {tag}", f"host syncs, {tag}", f"CUDA eager time vs dense, {tag}"]
    now_tag = now["config"]["commit"]
    head += [f"kernels vs dense, {now_tag}", f"host syncs, {now_tag}", f"CUDA eager time vs dense, {now_tag}"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def cells(run, name, group, key):
        rows = run["results"][group]
        r = rows[key]
        cuda = _cuda_eager_ratios(results_dir, name).get((group, key), "1.00x" if key == "dense" else "-")
        return [f"{r['kernels']} ({r['kernels'] / rows['dense']['kernels']:.2f}x)", str(r["syncs"]), cuda]

    for group, rows in now["results"].items():
        for key in rows:
            row = [group, key]
            if timed:
                row += cells(timed, OP_COUNT_TIMED, group, key)
            row += cells(now, OP_COUNT_NOW, group, key)
            lines.append("| " + " | ".join(row) + " |")
    title = f"### Kernel launches and host syncs per training step, counted on CPU (`{OP_COUNT_NOW}`"
    title += f", `{OP_COUNT_TIMED}`)" if timed else ")"
    note = (
        "Kernels: non-view ATen operators of one forward+backward (the count, and the ratio to dense); "
        "host syncs: those that make the host wait for CUDA (ESPnet's own `make_pad_mask` accounts "
        "for 3 in every encoder). CUDA eager time: measured on the H200 on the same code "
        f"({', '.join('`%s`' % n for pair in OP_COUNT_CUDA.values() for n in pair)}; "
        "FFN: range over the E=8, 8k/32k-frame cases; encoder: batch 8)."
    )
    return f"\n{title}\n\n{note}\n\n" + "\n".join(lines) + "\n"


def before_after_section(results_dir):
    """moe / dense CUDA eager time of the same cases measured on two commits."""
    lines = []
    for before_name, after_name in BEFORE_AFTER_FFN + BEFORE_AFTER_ENCODER:
        before, after = load(results_dir, before_name), load(results_dir, after_name)
        if before is None or after is None:
            continue
        if not lines:
            tags = before["machine"].get("commit"), after["machine"].get("commit")
            lines = [f"| step | case | dense, {tags[0]} | moe, {tags[0]} | dense, {tags[1]} | moe, {tags[1]} |", "|---|---|---|---|---|---|"]
        if before["benchmark"] == "moe_ffn":
            for c in after["cases"]:
                b = find_case(before, c["d"], c["frames"], c["experts"])
                if b is None:
                    continue
                case = f"d={c['d']} S={c['frames']} E={c['experts']}"
                lines.append(
                    f"| ffn | {case} | {b['variants']['dense']['median_s'] * 1e3:.2f} ms | {ratio(b, 'moe'):.2f}x"
                    f" | {c['variants']['dense']['median_s'] * 1e3:.2f} ms | {ratio(c, 'moe'):.2f}x |"
                )
        else:
            rb, ra = before["results"], after["results"]
            for k in ("switch", "omni"):
                lines.append(
                    f"| encoder, batch {after['config']['batch']} | {k} | {rb['dense']['median_s'] * 1e3:.0f} ms"
                    f" | {rb[k]['median_s'] / rb['dense']['median_s']:.2f}x | {ra['dense']['median_s'] * 1e3:.0f} ms"
                    f" | {ra[k]['median_s'] / ra['dense']['median_s']:.2f}x |"
                )
    if not lines:
        return ""
    names = ", ".join(f"`{b}`" for b, _ in BEFORE_AFTER_FFN + BEFORE_AFTER_ENCODER)
    return (
        f"\n### CUDA eager time before and after commit {tags[1]} ({names} and the same names without the suffix)\n\n"
        "Dense step time and moe (or encoder) / dense time ratio; each commit measured in its own "
        "lease of an H200 (two machines of the same kind, not an A/B on one machine).\n\n"
        + "\n".join(lines) + "\n"
    )


def _cpu(name):
    return not name.startswith(GPU_DIR)


def acceptance_sections(results_dir):
    out = []
    for moe_name, enc_name, title in ACCEPTANCE_RUNS:
        moe, enc = load(results_dir, moe_name), load(results_dir, enc_name)
        if moe is None and enc is None:
            continue
        threads = (moe or enc)["machine"]["threads"]
        out.append(
            f"### Acceptance, CPU, {title} ({threads} thread{'s' if threads != 1 else ''}; "
            f"`{moe_name}`, `{enc_name}`)\n"
        )
        out.append(acceptance(moe, enc) + "\n")
    return out


def moe_ffn_sections(results_dir, cpu):
    """The MoE FFN tables of the CPU (``cpu``) or the GPU runs."""
    out = []
    for name, title in MOE_RUNS:
        run = load(results_dir, name) if _cpu(name) == cpu else None
        if run is None:
            continue
        out.append(f"\n### MoE FFN, {title} (`{name}`)\n")
        out.append(machine_line(run) + f" | total {run['config']['elapsed_s']:.0f} s\n")
        out.append(
            "Times: dense in ms, the others as a ratio to dense (lower is faster); `loop/moe`: how "
            "many times faster ours is than the loop. Memory: dense peak extra tensor memory of one "
            "step, the others as a ratio. `CPU stall`: share of the timing during which some task "
            "waited for a CPU (other jobs on the machine; see above)."
            + (" `faults`: minor page faults per step (fresh 4 KiB pages)." if run["config"].get("page_faults") else "")
            + "\n"
        )
        out.append(table(run["cases"], run["config"]["variants"], memory=not run["config"].get("no_memory")))
    return out


def encoder_step_sections(results_dir, cpu):
    """The encoder training-step tables of the CPU (``cpu``) or the GPU runs."""
    out = []
    for name, title in ENCODER_RUNS:
        run = load(results_dir, name) if _cpu(name) == cpu else None
        if run is None:
            continue
        c = run["config"]
        out.append(f"\n### Encoder training step, {title} (`{name}`)\n")
        out.append(
            machine_line(run)
            + f" | batch {c['batch']} x {c['seconds']:g} s, lengths {c['ilens']}"
            + f" | CPU stall while timing {stall(run.get('machine_load'))}\n"
        )
        out.append(encoder_table(run["results"], memory=not c.get("no_memory")))
    return out


def decoding_sections(results_dir):
    out = []
    for name, title in INFER_RUNS:
        run = load(results_dir, name)
        if run is None:
            continue
        c = run["config"]
        source = ", ".join(f"{k}: {v['exp']}/{v['checkpoint']}" for k, v in c["configs"].items() if "exp" in v)
        out.append(f"\n### Encoder inference, {title} (`{name}`)\n")
        out.append(
            machine_line(run) + " | " + (f"models {source}" if source else "recipe configs")
            + (f" | audio {c['audio']}" if c.get("audio") else "") + "\n"
        )
        out.append(
            "Dense: median ms of the encoder forward / forward + greedy CTC; the others: ratios to dense "
            "(`*_loop`: experts forced onto the per-slice loop, CPU inference before the padded path). "
            "`pad waste`: the padded path's `E * largest slice / frames` (1 = even routing)."
            + (" `duo_*`: the Duo Conformer with every frame of each slot on the path its policy fixes "
               "(`big`, `small`, `static_` one letter per slot: B big, S small, K skip); `Duo compute`: its FFN "
               "compute relative to all-big." if any(k.startswith("duo_") for k in run["cases"][0]["variants"])
               else "") + "\n"
        )
        out.append(infer_table(run["cases"]))
    run = load(results_dir, PARTS_RUN)
    if run is not None:
        out.append(f"\n### Encoder FFNs in parts, CPU, freshly initialised encoders (`{PARTS_RUN}`)\n")
        out.append(machine_line(run) + " | recipe configs\n")
        out.append(
            "Per FFN (the encoder's FFNs run in turn on their recorded inputs, `encoder_ffn_parts.py`): all of it, "
            "its two matmuls alone (MoE: the GEMMs of the path it takes, `gemm_kind`, on the recorded slice "
            "sizes), the rest (activation, "
            "router, gathers, dispatch, scatter) and the router alone; the MoE FFN's extra time over the dense "
            f"FFN's, and the budget: what it may cost more for the encoder to stay within "
            f"{run['config']['target']:g}x the dense encoder.\n"
        )
        out.append(parts_table(run["cases"], run["config"]["target"]))
    for name, title in DECODE_RTF_RUNS:
        run = load(results_dir, name)
        if run is None:
            continue
        c = run["config"]
        out.append(f"\n### End-to-end decoding, {title} (`{name}`)\n")
        models = ", ".join(f"{k}: {v}/{c['checkpoint']}" for k, v in c["model"].items())
        out.append(
            machine_line(run) + f" | {c['utterances']} utterances of {c['data']} ({c['audio_s']:.0f} s) | "
            f"models {models} | LM {c['lm']}\n"
        )
        out.append(decode_rtf_table(run["results"]))
    return out


def rows_section(results_dir):
    out = []
    run = load(results_dir, ROWS_RUN)
    if run is not None:
        c = run["config"]
        out.append(f"\n### One MoE FFN's inference paths by frame count, CPU (`{ROWS_RUN}`)\n")
        out.append(machine_line(run) + f" | d x h {c['dims'][0]} x {c['dims'][1]}, {c['experts']} top-1 experts\n")
        out.append(
            "Dense: median time of ESPnet's FFN; the others: ratios to it, `auto` with the automatic choice "
            "(`auto took`), the rest forced onto one path (`ffn_infer_rows.py`; router weights N(0, 1), so the "
            "frames spread over the experts about evenly).\n"
        )
        out.append(rows_table(run["cases"]))
    return out


def ffn_speed(results_dir):
    return acceptance_sections(results_dir) + moe_ffn_sections(results_dir, cpu=True) + rows_section(results_dir)


def training_step(results_dir):
    return encoder_step_sections(results_dir, cpu=True) + [s for s in [op_count_section(results_dir)] if s]


def gpu(results_dir):
    out = [s for s in (cuda_acceptance(results_dir), before_after_section(results_dir)) if s]
    return out + moe_ffn_sections(results_dir, cpu=False) + encoder_step_sections(results_dir, cpu=False)


# report (relative to the results directory) -> the sections between its markers
REPORTS = {
    "ffn_speed.md": ffn_speed,
    "training_step.md": training_step,
    "decoding_speed.md": decoding_sections,
    GPU_DIR.rstrip("/") + ".md": gpu,
}


def generate(results_dir, report):
    """The generated part of ``report`` (a key of :data:`REPORTS`)."""
    return "\n".join(REPORTS[report](results_dir)) + "\n"


def rewrite(path, body):
    """``path`` with its part between the markers replaced by ``body``: (old text, new text)."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    if BEGIN not in text or END not in text:
        sys.exit(f"{path}: markers {BEGIN} / {END} not found")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    return text, head + BEGIN + "\n" + body + END + tail


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", default=os.path.join(HERE, "results"), help="directory of the JSON files and reports")
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if a report is not what its JSON makes")
    parser.add_argument("--print", action="store_true", help="print the generated parts instead of writing them")
    args = parser.parse_args(argv)
    stale = []
    for report in REPORTS:
        body = generate(args.results, report)
        if args.print:
            print(f"<!-- {report} -->\n{body}")
            continue
        path = os.path.join(args.results, report)
        old, new = rewrite(path, body)
        if old == new:
            continue
        if args.check:
            stale.append(path)
            continue
        with open(path, "w", encoding="utf-8") as f:
            f.write(new)
        print(f"updated {path}")
    if stale:
        sys.exit("not what the JSON files make (run benchmarks/make_reports.py): " + ", ".join(stale))


if __name__ == "__main__":
    main()
