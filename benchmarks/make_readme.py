"""Regenerate the measured sections of benchmarks/README.md from the JSON results.

Every number in the README between the ``<!-- BEGIN GENERATED -->`` and
``<!-- END GENERATED -->`` markers comes from ``benchmarks/results/*.json``; nothing there is
typed by hand.

    python benchmarks/make_readme.py            # rewrites benchmarks/README.md
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _tables import encoder_table, stall, table  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
BEGIN, END = "<!-- BEGIN GENERATED -->", "<!-- END GENERATED -->"

# (JSON file, title); missing files are left out.
MOE_RUNS = [
    ("moe_ffn.json", "CPU"),
    ("moe_ffn_1thread.json", "CPU, 1 thread"),
    ("moe_ffn_impls.json", "CPU, our two expert implementations (`moe`: fused loop, the CPU default; `moe_gmm`: torch._grouped_mm)"),
    ("moe_ffn_cuda_full.json", "CUDA, full grid, eager"),
    ("moe_ffn_cuda.json", "CUDA, gpu_check.sh's reduced grid, eager"),
    ("moe_ffn_cuda_compile.json", "CUDA, torch.compile (default mode)"),
    ("moe_ffn_cuda_cudagraphs.json", "CUDA, torch.compile mode=reduce-overhead (CUDA graphs)"),
]
# CUDA acceptance (issue: "at most 1.3x dense" in bf16): (JSON file, how the modules ran)
CUDA_ACCEPTANCE_RUNS = [
    ("moe_ffn_cuda_full.json", "eager"),
    ("moe_ffn_cuda_compile.json", "torch.compile"),
    ("moe_ffn_cuda_cudagraphs.json", "torch.compile, CUDA graphs"),
]
ENCODER_RUNS = [
    ("encoder_step.json", "CPU"),
    ("encoder_step_1thread.json", "CPU, 1 thread"),
    ("encoder_step_cuda.json", "CUDA"),
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
        c["dtype"],
        f"warm-up {c['warmup']}, median of "
        + (f"up to {c['repeats']} rounds (column `rounds`)" if "case_budget_s" in c else f"{c['repeats']} rounds"),
        f"measured {m['time']}",
    ]
    if load:
        parts.append(f"load average at start {load[0]:.1f}")
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


def cuda_acceptance(results_dir):
    """moe / dense time at the CPU target's case and the worst case of each CUDA run."""
    lines = ["| target | measured | wanted | |", "|---|---|---|---|"]
    device = None
    for name, how in CUDA_ACCEPTANCE_RUNS:
        run = load(results_dir, name)
        if run is None:
            continue
        device = run["machine"]["device_name"]
        c8 = find_case(run, 256, 8192, 8)
        lines.append(check(f"moe / dense time, d=256 h=1024 S=8k E=8, {how}", c8 and ratio(c8, "moe"), "<= 1.3", stall_column=False))
        worst = max(
            ((ratio(c, "moe"), c) for c in run["cases"] if ratio(c, "moe") is not None),
            key=lambda rc: rc[0], default=(None, None),
        )
        if worst[1] is not None:
            c = worst[1]
            label = f"moe / dense time, worst of {len(run['cases'])} cases (d={c['d']} S={c['frames']} E={c['experts']}), {how}"
            lines.append(check(label, worst[0], "<= 1.3", stall_column=False))
    enc = load(results_dir, "encoder_step_cuda.json")
    if enc is not None:
        device = device or enc["machine"]["device_name"]
        r = enc["results"]
        for k in ("switch", "omni"):
            lines.append(
                check(f"{k} / dense Conformer training step time, eager", r[k]["median_s"] / r["dense"]["median_s"], "<= 1.3", stall_column=False)
            )
    if device is None:
        return ""
    return f"### Acceptance, CUDA bf16 (`{device}`)\n\n" + "\n".join(lines) + "\n"


# op_count.py runs: the current code, and the code that was timed on the GPU above.
OP_COUNT_NOW, OP_COUNT_TIMED = "op_count.json", "op_count_87ea7b9.json"


def _cuda_eager_ratios(results_dir):
    """H200 eager time / dense of the FFN (range over the E=8 cases) and of the encoders."""
    out = {}
    run = load(results_dir, "moe_ffn_cuda_full.json")
    if run is not None:
        rs = [ratio(c, "moe") for c in run["cases"] if c["experts"] == 8 and ratio(c, "moe") is not None]
        if rs:
            out[("ffn", "moe")] = f"{min(rs):.2f}-{max(rs):.2f}x"
    enc = load(results_dir, "encoder_step_cuda.json")
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
    cuda = _cuda_eager_ratios(results_dir)
    tag = timed["config"]["commit"] if timed else None
    head = ["step", "variant"]
    if timed:
        head += [f"kernels vs dense, {tag}", f"host syncs, {tag}", f"CUDA eager time vs dense, {tag}"]
    head += [f"kernels vs dense, {now['config']['commit']}", f"host syncs, {now['config']['commit']}"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def cells(run, group, key):
        rows = run["results"][group]
        r = rows[key]
        return [f"{r['kernels']} ({r['kernels'] / rows['dense']['kernels']:.2f}x)", str(r["syncs"])]

    for group, rows in now["results"].items():
        for key in rows:
            row = [group, key]
            if timed:
                row += cells(timed, group, key) + [cuda.get((group, key), "1.00x" if key == "dense" else "-")]
            row += cells(now, group, key)
            lines.append("| " + " | ".join(row) + " |")
    title = f"### Kernel launches and host syncs per training step, counted on CPU (`results/{OP_COUNT_NOW}`"
    title += f", `results/{OP_COUNT_TIMED}`)" if timed else ")"
    note = (
        "Kernels: non-view ATen operators of one forward+backward (the count, and the ratio to dense); "
        "host syncs: those that make the host wait for CUDA (ESPnet's own `make_pad_mask` accounts "
        "for 3 in every encoder). CUDA eager time: from the H200 tables below, which were measured "
        f"on the MoE code of {tag} (FFN: range over the E=8 cases)." if timed else ""
    )
    return f"\n{title}\n\n{note}\n\n" + "\n".join(lines) + "\n"


def generate(results_dir):
    out = []
    for moe_name, enc_name, title in ACCEPTANCE_RUNS:
        moe, enc = load(results_dir, moe_name), load(results_dir, enc_name)
        if moe is None and enc is None:
            continue
        threads = (moe or enc)["machine"]["threads"]
        out.append(
            f"### Acceptance, CPU, {title} ({threads} thread{'s' if threads != 1 else ''}; "
            f"`results/{moe_name}`, `results/{enc_name}`)\n"
        )
        out.append(acceptance(moe, enc) + "\n")
    cuda = cuda_acceptance(results_dir)
    if cuda:
        out.append(cuda)
    counts = op_count_section(results_dir)
    if counts:
        out.append(counts)
    for name, title in MOE_RUNS:
        run = load(results_dir, name)
        if run is None:
            continue
        out.append(f"\n### MoE FFN, {title} (`results/{name}`)\n")
        out.append(machine_line(run) + f" | total {run['config']['elapsed_s']:.0f} s\n")
        out.append(
            "Times: dense in ms, the others as a ratio to dense (lower is faster); `loop/moe`: how "
            "many times faster ours is than the loop. Memory: dense peak extra tensor memory of one "
            "step, the others as a ratio. `CPU stall`: share of the timing during which some task "
            "waited for a CPU (other jobs on the machine; see above).\n"
        )
        out.append(table(run["cases"], run["config"]["variants"], memory=not run["config"].get("no_memory")))
    for name, title in ENCODER_RUNS:
        run = load(results_dir, name)
        if run is None:
            continue
        c = run["config"]
        out.append(f"\n### Encoder training step, {title} (`results/{name}`)\n")
        out.append(
            machine_line(run)
            + f" | batch {c['batch']} x {c['seconds']:g} s, lengths {c['ilens']}"
            + f" | CPU stall while timing {stall(run.get('machine_load'))}\n"
        )
        out.append(encoder_table(run["results"], memory=not c.get("no_memory")))
    return "\n".join(out) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--results", default=os.path.join(HERE, "results"))
    parser.add_argument("--readme", default=os.path.join(HERE, "README.md"))
    parser.add_argument("--print", action="store_true", help="print instead of rewriting the README")
    args = parser.parse_args(argv)
    body = generate(args.results)
    if args.print:
        print(body)
        return
    with open(args.readme) as f:
        text = f.read()
    if BEGIN not in text or END not in text:
        sys.exit(f"{args.readme}: markers {BEGIN} / {END} not found")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    with open(args.readme, "w") as f:
        f.write(head + BEGIN + "\n" + body + END + tail)
    print(f"updated {args.readme}")


if __name__ == "__main__":
    main()
