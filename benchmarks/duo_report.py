#!/usr/bin/env python3
"""duo.md and duo_pareto.png from the JSON of ``benchmarks/duo.py`` (nothing typed by hand).

    python benchmarks/duo_report.py --json benchmarks/results/duo.json \\
        --quality benchmarks/results/quality.json --stage1_decode_tag decode_asr_duo_policybig

``--quality`` and ``--stage1_decode_tag`` add the beam-search comparison of the stage-1 model's
all-big decoding (the recipe's stages 6-7, ``--inference_args "--duo_policy big"``) with the
dense Conformer of quality.md (its run with the same seed).
"""
import argparse
import json
import os
import re
import statistics
import sys
from typing import Dict, List, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from _report import checkout_relative  # noqa: E402

OOD = ["test_unseen_voice", "test_noisy", "test_tempo", "test_real"]
LABELS = {"big": "all big", "small": "all small", "learned": "learned router (as trained)"}
POLICY_LABELS = {"static": "best static pattern (dev)", "random": "best random pattern (dev)",
                 "learned": "learned router (calibrated)", "oracle": "oracle (per utterance)"}


def label(name: str, point: Dict) -> str:
    if name in LABELS:
        return LABELS[name]
    return f"{POLICY_LABELS[point['policy']]}, b={point['budget']:g}"


def mean(xs: List[float]) -> Optional[float]:
    xs = [x for x in xs if x is not None]
    return statistics.mean(xs) if xs else None


def fmt(x, digits=2, suffix="") -> str:
    return "-" if x is None else f"{x:.{digits}f}{suffix}"


def stage2_valid_fractions(log: str):
    """(epoch, {slot: {path: printed fraction}}, printed duo_compute, printed duo_budget_loss) of the last "epoch
    results" line's validation part in ``log`` (None without one)."""
    if not os.path.isfile(log):
        return None
    last = None
    with open(log, encoding="utf-8", errors="replace") as f:
        for line in f:
            if "epoch results" in line and "[valid]" in line:
                last = line
    if last is None:
        return None
    epoch = re.search(r"(\d+)epoch results", last).group(1)
    valid = last.split("[valid]", 1)[1]
    fractions = {}
    for slot, path, value in re.findall(r"\bduo(\d+)_(big|small|skip)=([0-9.]+)", valid):
        fractions.setdefault(int(slot), {})[path] = value
    compute = re.search(r"\bduo_compute=([0-9.]+)", valid)
    budget = re.search(r"\bduo_budget_loss=([-+0-9.e]+)", valid)
    return epoch, fractions, compute.group(1) if compute else "-", budget.group(1) if budget else "-"


def summarise(data: Dict) -> Dict[str, Dict]:
    """Per point: compute, WER per set, OOD average, oracle-subset WERs, RTF."""
    sets = [s for s in next(iter(data["results"].values()))["sets"]]
    ood = [s for s in sets if s in OOD]
    rtf = data["speed"]["rtf"]
    out = {}
    for name, res in data["results"].items():
        per = res["sets"]
        row = {
            "compute": mean([per[s]["compute"] for s in sets]),
            "wer": {s: per[s]["wer"] for s in sets},
            "sub": {s: per[s]["wer_oracle_subset"] for s in sets},
            "rtf": rtf.get(name, {}).get("rtf"),
        }
        row["ood"] = mean([row["wer"][s] for s in ood]) if all(row["wer"][s] is not None for s in ood) else None
        row["sub_ood"] = mean([row["sub"][s] for s in ood])
        out[name] = row
    return out


def learned_names(points: Dict) -> List[str]:
    """The learned router as trained, then calibrated to each budget, largest budget first."""
    return ["learned"] + sorted((n for n in points if points[n]["policy"] == "learned" and "@" in n),
                                key=lambda n: -points[n]["budget"])


def shared_section(data: Dict, rows: Dict, shared: Dict, srows: Dict) -> List[str]:
    """Per-slot routers (``data``) against one router shared by all slots (``shared``, same stage 1):
    WER, compute, speed (each against all-big and dense of its own run) and the gap to the oracle."""
    n_sub = data["oracle_utts"]
    lines = ["## One router shared by all slots (Omni-like) against one router per slot", "",
             f"The same stage-1 model with a stage 2 of one router for all {len(data['slots'])} slots (`{shared['stage2']}`; "
             f"`{shared['command']}`, commit {shared['commit']}) beside the per-slot routers above; both calibrated "
             f"to each budget on the same dev utterances. Speed: each model against all-big and the dense Conformer "
             f"timed in its own run (the runs' RTFs are not compared with each other). Oracle: the per-utterance "
             f"oracle of the stage-1 model (routers play no part in it) on the first {n_sub} utterances of each set.", "",
             "| router | point | compute | test_seen | OOD avg | speed-up vs all big | vs dense | test_seen, oracle "
             "subset | oracle at that budget | gap (points) |", "|---|---|---|---|---|---|---|---|---|---|"]
    for who, d, r in (("per slot", data, rows), ("shared", shared, srows)):
        big, dense = r["big"]["rtf"], d["speed"]["rtf"].get("dense", {}).get("rtf")
        for name in learned_names(d["points"]):
            x, budget = r[name], d["points"][name]["budget"]
            oracle = rows.get(f"oracle@{budget:g}") if budget is not None else None
            o = oracle["sub"]["test_seen"] if oracle else None
            gap = x["sub"]["test_seen"] - o if o is not None and x["sub"]["test_seen"] is not None else None
            lines.append(f"| {who} | {'as trained' if budget is None else f'b={budget:g}'} | {fmt(x['compute'], 3)} | "
                         f"{fmt(x['wer']['test_seen'])} | {fmt(x['ood'])} | "
                         f"{fmt(big / x['rtf'] if x['rtf'] and big else None, 2, 'x')} | "
                         f"{fmt(dense / x['rtf'] if x['rtf'] and dense else None, 2, 'x')} | {fmt(x['sub']['test_seen'])} | "
                         f"{fmt(o)} | {fmt(gap)} |")
    lines.append("")
    for who, d, r in (("per-slot routers", data, rows), ("shared router", shared, srows)):
        big = r["big"]["sub"]["test_seen"]
        beat = [n for n in learned_names(d["points"])
                if r[n]["compute"] is not None and r[n]["compute"] < 0.999 and r[n]["sub"]["test_seen"] is not None
                and r[n]["sub"]["test_seen"] < big]
        lines.append(f"- Duo-LLM's 'fewer big paths can beat all big', {who} (oracle-subset test_seen WER, all big "
                     f"{fmt(big)}%): " + ("holds at " + ", ".join(
                         f"{'as trained' if d['points'][n]['budget'] is None else 'b=%g' % d['points'][n]['budget']} "
                         f"({fmt(r[n]['sub']['test_seen'])}% at compute {fmt(r[n]['compute'], 3)})" for n in beat)
                         if beat else "does not hold") + ".")
    b = "learned@0.5"
    if b in srows and b in rows:
        a, c = rows[b], srows[b]
        lines.append(f"- At budget 0.5: shared router test_seen {fmt(c['wer']['test_seen'])}% / OOD avg {fmt(c['ood'])}% "
                     f"(compute {fmt(c['compute'], 3)}) against per-slot {fmt(a['wer']['test_seen'])}% / {fmt(a['ood'])}% "
                     f"(compute {fmt(a['compute'], 3)}).")
    return lines + [""]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--json", required=True)
    p.add_argument("--quality", default=None, help="quality.json with the dense Conformer's runs")
    p.add_argument("--stage1_decode_tag", default=None, help="decode dir of the stage-1 all-big beam search")
    p.add_argument("--shared", default=None, metavar="JSON",
                   help="duo.py's JSON of the same stage-1 model with a stage 2 of one router shared by all slots")
    p.add_argument("--speed", default=None, metavar="JSON", help="duo_speed.py's speed JSON: a section on it")
    p.add_argument("--out_md", default=None)
    p.add_argument("--out_png", default=None)
    args = p.parse_args(argv)
    with open(args.json) as f:
        data = json.load(f)
    base = os.path.splitext(args.json)[0]
    out_md, out_png = args.out_md or base + ".md", args.out_png or base + "_pareto.png"
    rows = summarise(data)
    points = data["points"]
    sets = list(next(iter(data["results"].values()))["sets"])
    ood = [s for s in sets if s in OOD]
    big, rtf = rows["big"], data["speed"]["rtf"]
    dense_rtf = rtf.get("dense", {}).get("rtf")

    lines = ["# Duo: WER against FFN compute, per decoding policy", ""]
    lines += [f"Generated by `benchmarks/duo_report.py` from `{os.path.basename(args.json)}`, written by "
              f"`benchmarks/duo.py` (nothing typed by hand). Command: `{data['command']}` (commit {data['commit']})."]
    if data.get("wers_from"):
        w = data["wers_from"]
        lines[-1] += (f" That run measured the speed only; the WERs, compute, patterns and biases are those of "
                      f"`{w['command']}` (commit {w['commit']}).")
    lines.append("")
    costs = data["costs"]
    lines += [
        f"- model: stage 1 `{data['stage1']}` (random routing), stage 2 `{data['stage2']}` (learned routers, "
        f"backbone frozen), checkpoint `{data['checkpoint']}`; {len(data['slots'])} Duo slots; path costs "
        f"big {costs[0]:g}, small {costs[1]:g}, skip {costs[2]:g} (FFN FLOPs per frame relative to big)",
        "- decoding: greedy CTC (the encoder is the cost). Compute = mean over slots and frames of the cost of "
        "the path taken, counted, averaged over the test sets.",
        f"- searches on the first {data['dev']['utts']} utterances of `{data['dev']['set']}` (reference CTC loss); "
        f"random: best of {data['random_patterns']} patterns with compute in (b - 0.1, b]; oracle: greedy descent "
        f"per utterance on its own reference CTC loss, on the first {data['oracle_utts']} utterances of each test set",
        f"- speed: batch 1, encoder forward + greedy CTC (front-end included), {data['speed']['utts']} "
        f"`{data['speed']['set']}` utterances ({data['speed']['seconds']:.0f} s of audio), every point interleaved "
        f"per utterance, median of {data['speed']['repeats']} rounds, {data['threads']} threads; dense reference: "
        f"`{data['speed']['dense_config']}` (random weights: time does not depend on them)",
        "",
    ]

    if args.quality and args.stage1_decode_tag:
        from quality_runs import read_scores

        with open(args.quality) as f:
            quality = json.load(f)
        seed = "0"
        dense = quality["runs"].get(seed, {}).get("dense")
        stage1 = os.path.join(os.path.dirname(HERE), data["stage1"])  # duo.py writes it relative to the checkout
        scores = read_scores(stage1, args.stage1_decode_tag)
        if not dense:
            raise SystemExit(f"--quality {args.quality}: no dense run of seed {seed}")
        if not scores:
            raise SystemExit(f"--stage1_decode_tag {args.stage1_decode_tag}: no <set>/score_wer/summary.json "
                             f"under {os.path.join(stage1, args.stage1_decode_tag)}")
        lines += ["## Stage 1 all-big against the dense Conformer (beam search, same decoding as quality.md)", ""]
        lines += [f"Dense: quality.md's seed-{seed} run (`{dense['exp']}`, `{dense['decode_tag']}`); Duo: "
                  f"`{args.stage1_decode_tag}`, same seed, schedule and size.", ""]
        lines += ["| model | " + " | ".join(sets) + " | OOD avg |", "|---|" + "---|" * (len(sets) + 1)]
        for name, wers in (("Dense Conformer", dense["wer"]),
                           ("Duo stage 1, all big", {s: scores[s]["wer"] for s in scores if "wer" in scores[s]})):
            vals = [wers.get(s) for s in sets]
            o = mean([wers.get(s) for s in ood]) if all(wers.get(s) is not None for s in ood) else None
            lines.append(f"| {name} | " + " | ".join(fmt(v) for v in vals) + f" | {fmt(o)} |")
        lines.append("")

    lines += ["## WER (%) against compute", ""]
    lines += ["| policy | compute | " + " | ".join(sets) + " | OOD avg | RTF | speed-up vs all big"
              + (" | vs dense" if dense_rtf else "") + " |",
              "|---|---|" + "---|" * (len(sets) + 3 + (1 if dense_rtf else 0))]
    order = ["big", "small", "learned"] + [n for n in points if "@" in n and points[n]["policy"] != "oracle"]
    for name in order:
        r = rows[name]
        speed = big["rtf"] / r["rtf"] if r["rtf"] and big["rtf"] else None
        vs_dense = dense_rtf / r["rtf"] if r["rtf"] and dense_rtf else None
        lines.append(f"| {label(name, points[name])} | {fmt(r['compute'], 3)} | "
                     + " | ".join(fmt(r["wer"][s]) for s in sets) + f" | {fmt(r['ood'])} | {fmt(r['rtf'], 4)} | "
                     + fmt(speed, 2, "x") + (f" | {fmt(vs_dense, 2, 'x')}" if dense_rtf else "") + " |")
    if dense_rtf:
        lines.append("| dense Conformer (speed only) | 1.000 | " + " | ".join("-" for _ in sets)
                     + f" | - | {fmt(dense_rtf, 4)} | {fmt(big['rtf'] / dense_rtf if big['rtf'] else None, 2, 'x')} | 1.00x |")
    lines.append("")

    n_sub = data["oracle_utts"]
    lines += [f"## The oracle, on the first {n_sub} utterances of each test set", "",
              "Every policy's WER on the same utterances, beside the per-utterance oracle.", ""]
    lines += ["| policy | " + " | ".join(sets) + " | OOD avg | RTF |", "|---|" + "---|" * (len(sets) + 2)]
    for name in ["big", "small", "learned"] + [n for n in points if "@" in n]:
        r = rows[name]
        lines.append(f"| {label(name, points[name])} | " + " | ".join(fmt(r["sub"][s]) for s in sets)
                     + f" | {fmt(r['sub_ood'])} | {fmt(r['rtf'], 4)} |")
    lines.append("")

    lines += ["## Findings", ""]
    b = 0.5 if any(points[n].get("budget") == 0.5 for n in points) else None
    if b is not None:
        def rel(name, key="wer", s="test_seen"):
            v, ref = rows[name][key][s], big[key][s]
            return None if v is None or not ref else 100 * (v - ref) / ref

        for policy in ("learned", "static", "oracle"):
            name = f"{policy}@0.5"
            r = rows[name]
            speed = big["rtf"] / r["rtf"] if r["rtf"] and big["rtf"] else None
            if policy == "oracle":
                v, ref = r["sub"]["test_seen"], big["sub"]["test_seen"]
                lines.append(f"- Oracle at budget 0.5 (compute {fmt(r['compute'], 3)}): test_seen WER {fmt(v)}% vs "
                             f"all-big {fmt(ref)}% on the same {n_sub} utterances; OOD avg {fmt(r['sub_ood'])}% vs "
                             f"{fmt(big['sub_ood'])}%; speed-up {fmt(speed, 2, 'x')} (its per-utterance patterns as static ones).")
            else:
                rs = rel(name)
                ood_rel = (100 * (r["ood"] - big["ood"]) / big["ood"]) if r["ood"] is not None and big["ood"] else None
                lines.append(f"- {POLICY_LABELS[policy].capitalize()} at budget 0.5 (compute {fmt(r['compute'], 3)}): "
                             f"test_seen WER {fmt(r['wer']['test_seen'])}% ({fmt(rs, 1, '%')} relative to all-big "
                             f"{fmt(big['wer']['test_seen'])}%), OOD avg {fmt(r['ood'])}% ({fmt(ood_rel, 1, '%')}); "
                             f"measured encoder speed-up {fmt(speed, 2, 'x')} over all-big.")
        learned = rows["learned@0.5"]
        rs = rel("learned@0.5")
        speed = big["rtf"] / learned["rtf"] if learned["rtf"] and big["rtf"] else None
        lines.append(f"- Target 'learned router within 5% relative WER of all-big at half the compute' (test_seen): "
                     f"{'met' if rs is not None and rs <= 5 else 'not met'} ({fmt(rs, 1, '%')}).")
        lines.append(f"- Target 'encoder speed-up >= 1.25x at budget 0.5' (learned router): "
                     f"{'met' if speed is not None and speed >= 1.25 else 'not met'} ({fmt(speed, 2, 'x')}); "
                     + "best static pattern: "
                     + fmt(big["rtf"] / rows["static@0.5"]["rtf"] if rows["static@0.5"]["rtf"] else None, 2, "x") + ".")
        o, l_ = rows["oracle@0.5"]["sub"]["test_seen"], rows["learned@0.5"]["sub"]["test_seen"]
        if o is not None and l_ is not None:
            lines.append(f"- Oracle gap at budget 0.5 (test_seen, {n_sub} utterances): learned {fmt(l_)}% vs oracle "
                         f"{fmt(o)}% ({fmt(l_ - o)} points).")
    cheaper = [(n, r) for n, r in rows.items() if n != "big" and r["compute"] is not None and r["compute"] < 0.999]
    beat = [n for n, r in cheaper if r["sub"]["test_seen"] is not None and r["sub"]["test_seen"] < big["sub"]["test_seen"]]
    lines.append("- Duo-LLM's 'fewer big paths can beat all big' on test_seen (the oracle-subset WERs): "
                 + ("holds for " + ", ".join(f"{label(n, points[n])} ({fmt(rows[n]['sub']['test_seen'])}% at compute "
                                               f"{fmt(rows[n]['compute'], 3)})" for n in beat)
                    if beat else f"does not hold: no point with less compute beats all-big's {fmt(big['sub']['test_seen'])}%")
                 + ".")
    lines.append("")
    lines += ["## Patterns", "", "Slots in execution order: " + ", ".join(f"`{s}`" for s in data["slots"]) + ".", ""]
    lines += ["| budget | best static (dev) | best random (dev) | learned cost bias (dev compute) |", "|---|---|---|---|"]
    for bb in data["budgets"]:
        key = f"{bb:g}"
        st, rd = points.get(f"static@{key}", {}), points.get(f"random@{key}", {})
        lb = data["learned_bias"][key]
        lines.append(f"| {key} | `{st.get('pattern', '-')}` | `{rd.get('pattern', '-')}` | "
                     f"{lb['bias']:.3f} ({lb['dev_compute']:.3f}) |")
    lines.append("")
    shared = srows = None
    if args.shared:
        with open(args.shared) as f:
            shared = json.load(f)
        if shared["stage1"] != data["stage1"]:
            raise SystemExit(f"--shared {args.shared}: stage 1 {shared['stage1']}, not {data['stage1']} of {args.json}")
        srows = summarise(shared)
        lines += shared_section(data, rows, shared, srows)
    if args.speed:
        from duo_speed import summary_section

        with open(args.speed) as f:
            speed = json.load(f)
        lines += summary_section(speed, os.path.splitext(os.path.basename(args.speed))[0] + ".md")
    slots = stage2_valid_fractions(os.path.join(data["stage2"], "train.log"))
    if slots:
        epoch, fractions, compute, budget = slots
        lines += [f"## The learned routers per slot (stage 2, `dev` in its epoch {epoch}, from its train.log)", "",
                  f"Paths taken by the routers as trained (no cost bias): compute {compute}, while the budget loss "
                  f"`(expected compute - duo_budget)^2` of the router probabilities is {budget}.", "",
                  "| slot | big | small | skip |", "|---|---|---|---|"]
        for i, name in enumerate(data["slots"]):
            f = fractions.get(i, {})
            lines.append(f"| `{name}` | " + " | ".join(f.get(p, "-") for p in ("big", "small", "skip")) + " |")
        lines.append("")
    lines.append(f"![Pareto]({os.path.basename(out_png)})")
    with open(out_md, "w") as f:
        f.write(checkout_relative("\n".join(lines) + "\n"))
    print(f"wrote {out_md}")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    groups = {"static": "s", "random": "^", "learned": "o", "oracle": "*"}
    for ax, key, title in ((axes[0], "test_seen", "test_seen"), (axes[1], "ood", "out-of-domain average")):
        for policy, marker in groups.items():
            names = sorted((n for n in points if points[n]["policy"] == policy and "@" in n),
                           key=lambda n: points[n]["budget"])
            if policy == "oracle":
                xs = [rows[n]["compute"] for n in names]
                ys = [rows[n]["sub"]["test_seen"] if key == "test_seen" else rows[n]["sub_ood"] for n in names]
                lab = f"oracle ({n_sub} utts/set)"
            else:
                xs = [rows[n]["compute"] for n in names]
                ys = [rows[n]["wer"]["test_seen"] if key == "test_seen" else rows[n]["ood"] for n in names]
                lab = POLICY_LABELS[policy]
            ax.plot(xs, ys, marker=marker, label=lab)
        if shared is not None:
            spoints = shared["points"]
            names = sorted((n for n in spoints if spoints[n]["policy"] == "learned" and "@" in n),
                           key=lambda n: spoints[n]["budget"])
            ax.plot([srows[n]["compute"] for n in names],
                    [srows[n]["wer"]["test_seen"] if key == "test_seen" else srows[n]["ood"] for n in names],
                    marker="o", linestyle="--", label="learned router, one shared by all slots (calibrated)")
        y_sub = big["sub"]["test_seen"] if key == "test_seen" else big["sub_ood"]
        ax.plot([big["compute"]], [y_sub], marker="D", linestyle="none", markerfacecolor="none", color="tab:red",
                label=f"all big on the oracle's {n_sub} utts/set")
        for name, marker in (("big", "D"), ("small", "v")):
            y = rows[name]["wer"]["test_seen"] if key == "test_seen" else rows[name]["ood"]
            ax.plot([rows[name]["compute"]], [y], marker=marker, linestyle="none", color="k", label=LABELS[name])
        ax.set_xlabel("relative encoder FFN compute (1 = all big)")
        ax.set_ylabel("WER (%), greedy CTC")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)
    print(f"wrote {out_png}")


if __name__ == "__main__":
    main()
