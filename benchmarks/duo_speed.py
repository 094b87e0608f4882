#!/usr/bin/env python3
"""Duo decoding speed at three encoder sizes: each policy against the dense Conformer and the zero-FFN bound.

    # 1. the trained routers' path mix (the demo's stage-2 model, from the recipe directory)
    cd egs2/synth_en/asr1 && python ../../../benchmarks/duo_speed.py mix \\
        --study ../../../benchmarks/results/duo.json --out ../../../benchmarks/results/duo_mix.json
    # 2. the speed study (fresh encoders; writes duo_speed.json and duo_speed.md)
    python benchmarks/duo_speed.py speed --mix benchmarks/results/duo_mix.json \\
        --out benchmarks/results/duo_speed.json

``mix``: the stage-2 model of a ``duo.py`` study (``--study``: its JSON names the model and the
cost bias calibrated on dev for each budget) decodes ``--utts`` utterances of ``--set`` at
batch 1 under the learned policy of each ``--budgets`` budget; per slot the fraction of frames
on each path is recorded.  On the same utterances it times, interleaved, the learned policy
against a random policy drawing each slot's paths with those fractions (how ``speed`` times a
router at larger sizes, where there is no trained one): their ratio says what that stand-in
costs against the real router.

``speed``: per size (``--sizes``), freshly initialised encoders on random 80-dim features
(time does not depend on the weights, except through a router's choices):

* ``dense``: ESPnet's ``ConformerEncoder`` of the size's dense config;
* ``bound@c``: the same encoder with the FFNs of a share ``1 - c`` of its FFN slots replaced by
  zeros (spread evenly over the depth; ``c`` = 0.75, 0.5, 0.25, 0): what an adaptive encoder
  of compute ``c`` with no routing cost at all would take;
* ``big``, ``small``: the Duo encoder (same size) with every slot on one path;
* ``static@c``: the slots of ``bound@c`` big, the others skip;
* ``learned@b``: the per-slot path mix that the trained routers took at budget ``b`` (``--mix``;
  slot ``encoders.i.X`` of a deeper encoder takes the mix of the demo's block ``i * 6 // blocks``,
  same FFN), drawn per frame as a random policy; its compute is counted from the slots' records.

Every variant of a size and case is timed interleaved (``_bench.time_interleaved``), ``--runs``
times; each run gives each variant's time over dense and over the bound of the same compute
(``bound@c`` measured at c = 0, 0.25, 0.5, 0.75, 1 in the same run, linear between them); the
report gives the worst run of each.
"""
import argparse
import copy
import json
import os
import re
import statistics
import sys
import time

import torch
import yaml

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _bench  # noqa: E402
from _report import write_json, write_json_and_report  # noqa: E402
from encoder_step import CLASSES, ROOT  # noqa: E402

from espnet_omnirouter.moe import DuoPolicy, duo_stats  # noqa: E402

LS100 = "egs2/librispeech_100/asr1/conf/train_asr_{}.yaml"
# name -> (dense config, Duo config, encoder_conf overrides of both)
SIZES = {
    "demo": ("conf/train_asr_conformer.yaml", "conf/train_asr_duo_conformer.yaml", {}),
    "librispeech_100": (LS100.format("conformer"), LS100.format("duo_conformer"), {}),
    "usual": (LS100.format("conformer"), LS100.format("duo_conformer"), {"linear_units": 2048, "duo_small_units": 128}),
}
SIZE_NOTES = {
    "demo": "the demo's Conformer (d 144, FFN 576, 6 blocks: 12 FFN slots)",
    "librispeech_100": "the LibriSpeech-100 recipe's Conformer (d 256, FFN 1024, 12 blocks: 24 slots)",
    "usual": "ESPnet's usual Conformer (d 256, FFN 2048, 12 blocks: 24 slots; small path 128)",
}
BOUNDS = (1.0, 0.75, 0.5, 0.25, 0.0)


def build(path: str, overrides: dict, feat_dim: int = 80):
    """(encoder name, encoder_conf, eval-mode encoder) of a config, ``overrides`` applied to its
    encoder_conf (only keys it has, Duo keys only for Duo encoders)."""
    with open(os.path.join(ROOT, path)) as f:
        conf = yaml.safe_load(f)
    enc_conf = dict(conf.get("encoder_conf", {}))
    enc_conf.update({k: v for k, v in overrides.items() if k in enc_conf})
    return conf["encoder"], enc_conf, CLASSES[conf["encoder"]](feat_dim, **enc_conf).eval()


def kept_slots(num_slots: int, compute: float):
    """Indices of the ``round(compute * num_slots)`` slots kept, spread evenly over the depth."""
    keep = round(compute * num_slots)
    return sorted({int((i + 0.5) * num_slots / keep) for i in range(keep)}) if keep else []


class Zeros(torch.nn.Module):
    """A skipped FFN: zeros of its input's shape."""

    def forward(self, x):
        return torch.zeros_like(x)


def bound_encoder(dense, names, compute):
    """A copy of ``dense`` whose FFNs of the slots ``names`` outside :func:`kept_slots` are zeros."""
    enc = copy.deepcopy(dense)
    keep = set(kept_slots(len(names), compute))
    for j, name in enumerate(names):
        if j not in keep:
            block, attr = name.split(".")[1:]
            setattr(enc.encoders[int(block)], attr, Zeros())
    return enc


def mix_for(names, mix: dict, demo_blocks: int, blocks: int):
    """Per slot of ``names`` the path probabilities of the demo slot it maps to."""
    probs = []
    for name in names:
        block, attr = re.fullmatch(r"encoders\.(\d+)\.(\w+)", name).groups()
        probs.append(tuple(mix[f"encoders.{int(block) * demo_blocks // blocks}.{attr}"]))
    return probs


def time_case(variants, xs, ilens, args):
    """One interleaved run: median seconds of each variant's forward, and the Duo compute."""

    def step(enc, policies):
        def run():
            if policies is not None:
                enc.set_duo_policies(policies)
            with torch.inference_mode():
                return enc(xs, ilens)

        return run

    steps = {name: step(enc, pol) for name, (enc, pol) in variants.items()}
    (times, _), load = _bench.run_quietly(
        lambda: _bench.time_interleaved(steps, torch.device("cpu"), args.warmup, args.repeats),
        args.quiet_psi, args.quiet_wait_s, args.quiet_retries,
    )
    out = {}
    for name, (enc, pol) in variants.items():
        out[name] = {"median_s": _bench.median(times[name]), "times_s": times[name]}
        if pol is not None:
            steps[name]()
            out[name]["compute"] = float(duo_stats(enc.duo_records(), enc.duo_costs())["duo_compute"])
    return out, load


def bound_at(run: dict, compute: float) -> float:
    """Seconds of the zero-FFN bound at ``compute``: linear between the measured ``bound@c``."""
    points = sorted((c, run["bound@" + f"{c:g}"]["median_s"]) for c in BOUNDS)
    for (c0, t0), (c1, t1) in zip(points, points[1:]):
        if c0 <= compute <= c1:
            return t0 + (t1 - t0) * (compute - c0) / (c1 - c0)
    raise ValueError(f"compute {compute} outside [0, 1]")


def speed(args):
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    with open(args.mix) as f:
        mix = json.load(f)
    sizes = {}
    for size in args.sizes:
        dense_cfg, duo_cfg, overrides = SIZES[size]
        _, dense_conf, dense = build(dense_cfg, overrides)
        _, duo_conf, duo = build(duo_cfg, overrides)
        names = list(duo.duo_names)
        if len(names) != 2 * len(dense.encoders):
            raise SystemExit(f"{duo_cfg}: expected a slot per FFN of {len(dense.encoders)} macaron blocks, got {names}")
        policy = {p: DuoPolicy("fixed", path=i) for i, p in enumerate(("big", "small", "skip"))}
        variants = {"dense": (dense, None)}
        variants.update({f"bound@{c:g}": (bound_encoder(dense, names, c), None) for c in BOUNDS[1:]})
        variants["bound@1"] = (dense, None)
        variants["big"] = (duo, [policy["big"]] * len(names))
        variants["small"] = (duo, [policy["small"]] * len(names))
        for c in (0.75, 0.5, 0.25):
            keep = set(kept_slots(len(names), c))
            variants[f"static@{c:g}"] = (duo, [policy["big" if j in keep else "skip"] for j in range(len(names))])
        gen = torch.Generator().manual_seed(args.seed)
        for b, slots in mix["mix"].items():
            probs = mix_for(names, slots, mix["blocks"], len(dense.encoders))
            variants[f"learned@{b}"] = (duo, [DuoPolicy("random", probs=p, generator=gen) for p in probs])
        cases = []
        for batch, seconds in args.cases:
            frames = int(round(seconds * 100))
            xs, ilens = torch.randn(batch, frames, 80), torch.full((batch,), frames, dtype=torch.long)
            runs = []
            for r in range(args.runs):
                run, load = time_case(variants, xs, ilens, args)
                runs.append({"variants": run, "machine_load": load})
                print(f"{size} {batch}x{seconds:g} run {r + 1}: " + ", ".join(
                    f"{n} {v['median_s'] / run['dense']['median_s']:.3f}" for n, v in run.items()), flush=True)
            cases.append({"batch": batch, "seconds": seconds, "runs": runs})
        sizes[size] = {"dense_config": dense_cfg, "duo_config": duo_cfg, "overrides": overrides,
                       "slots": names, "duo_conf": duo_conf, "dense_conf": dense_conf, "cases": cases}
    payload = {"benchmark": "duo_speed", "command": " ".join(["benchmarks/duo_speed.py"] + sys.argv[1:]),
               "commit": _bench.git_commit(), "machine": _bench.machine_info(torch.device("cpu")),
               "threads": args.threads, "mix": args.mix, "runs": args.runs, "warmup": args.warmup,
               "repeats": args.repeats, "sizes": sizes}
    write_json_and_report(args.out, payload, report(payload))


def ratios(case):
    """Per variant the worst run's time over dense and over the bound of its compute."""
    out = {}
    for name in case["runs"][0]["variants"]:
        vs_dense, vs_bound, compute = [], [], None
        for run in case["runs"]:
            v = run["variants"]
            vs_dense.append(v[name]["median_s"] / v["dense"]["median_s"])
            compute = v[name].get("compute")
            if compute is not None:
                vs_bound.append(v[name]["median_s"] / bound_at(v, compute))
        out[name] = {"vs_dense": max(vs_dense), "vs_bound": max(vs_bound) if vs_bound else None, "compute": compute}
    return out


def report(payload) -> str:
    """The Markdown report of a ``speed`` run."""
    lines = ["# Duo decoding speed at three encoder sizes", "",
             f"Generated by `benchmarks/duo_speed.py` from `{os.path.basename(payload['mix'])}` (commit "
             f"{payload['commit']}; {payload['machine'].get('cpu_model', 'CPU')}, {payload['threads']} threads). Time of "
             "the encoder forward over ESPnet's dense Conformer (below 1 = faster) and over the zero-FFN bound of "
             "the same compute, fresh encoders, random features, each the worst of "
             f"{payload['runs']} interleaved runs (median of {payload['repeats']} rounds each). See the "
             "script's docstring for the variants.", ""]
    for size, s in payload["sizes"].items():
        lines += [f"## {size}: {SIZE_NOTES.get(size, size)}", ""]
        cases = s["cases"]
        head = ["variant", "compute"] + [f"{c['batch']} x {c['seconds']:g} s: vs dense / vs bound" for c in cases]
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        table = [ratios(c) for c in cases]
        dense_ms = [statistics.median(r["variants"]["dense"]["median_s"] for r in c["runs"]) * 1e3 for c in cases]
        lines.append("| dense (ms) | 1 | " + " | ".join(f"{t:.1f} ms" for t in dense_ms) + " |")
        for name in table[0]:
            if name == "dense":
                continue
            compute = table[0][name]["compute"]
            if compute is None:
                compute = float(name.split("@")[1]) if "@" in name else None
            cells = []
            for t in table:
                r = t[name]
                cells.append(f"{r['vs_dense']:.3f}x" + (f" / {r['vs_bound']:.3f}x" if r["vs_bound"] is not None else ""))
            lines.append(f"| {name} | {'-' if compute is None else f'{compute:.3f}'} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def summary_section(payload, report_name: str = "duo_speed.md") -> list:
    """duo.md's section on a ``speed`` run: per size and case, speed-ups over dense (dense time
    over the variant's, worst run) of the bounds, all-big and the learned routers' mixes, and how
    far each learned mix is from the bound of its compute."""
    lines = ["## Speed at three encoder sizes", "",
             f"From [{report_name}]({report_name}) (`benchmarks/duo_speed.py`; fresh encoders, every variant "
             f"interleaved, worst of {payload['runs']} runs). Speed-up = dense time over the variant's (above 1 = "
             "faster than ESPnet's dense Conformer); the bound of compute c is the dense encoder with the FFNs of a "
             "share 1 - c of its slots replaced by zeros; learned@b: the trained routers' per-slot path mix at "
             "budget b (drawn per frame) and its counted compute. Noise: the dense encoder is timed twice in each "
             "run (as `dense` and as `bound@1`); the largest ratio of the two over the runs.", "",
             "| size | batch x s | dense | noise | bound 0.5 / 0.25 / 0 | all big | learned@0.5 (compute): vs dense, "
             "vs its bound | learned@0.25 (compute): vs dense, vs its bound |", "|---|---|---|---|---|---|---|---|"]
    for size, s in payload["sizes"].items():
        for case in s["cases"]:
            r = ratios(case)
            dense_ms = statistics.median(run["variants"]["dense"]["median_s"] for run in case["runs"]) * 1e3
            twice = [run["variants"]["bound@1"]["median_s"] / run["variants"]["dense"]["median_s"] for run in case["runs"]]
            cells = [size, f"{case['batch']} x {case['seconds']:g}", f"{dense_ms:.1f} ms",
                     f"{max(max(twice), 1 / min(twice)):.2f}x",
                     " / ".join(f"{1 / r[f'bound@{c}']['vs_dense']:.2f}x" for c in ("0.5", "0.25", "0")),
                     f"{1 / r['big']['vs_dense']:.2f}x"]
            for b in ("0.5", "0.25"):
                x = r.get(f"learned@{b}")
                cells.append("-" if x is None else f"{1 / x['vs_dense']:.2f}x ({x['compute']:.3f}), "
                             f"{x['vs_bound']:.2f}x the bound's time")
            lines.append("| " + " | ".join(cells) + " |")
    return lines + [""]


def measure_mix(args):
    """The ``mix`` command (module docstring)."""
    from duo import Model, Study, model_path, read_set

    torch.set_num_threads(args.threads)
    with open(args.study) as f:
        study = json.load(f)
    stage2 = study["stage2"]  # as duo.py wrote it: relative to the checkout's root, or to where it ran
    if not os.path.isabs(stage2) and not os.path.isdir(stage2):
        stage2 = os.path.join(ROOT, stage2)
    model = Model(stage2, study["checkpoint"])
    s = Study(model, 1)
    _, wavs, _ = read_set(args.data, args.set, args.utts)
    feats = s.feats(args.set, wavs)
    names = list(model.encoder.duo_names)
    out, timing = {}, {}
    for b in args.budgets:
        bias = study["learned_bias"][f"{b:g}"]["bias"]
        counts = torch.zeros(len(names), 3)
        s.set_learned(bias)
        for x, lens in feats:
            model.forward(x, lens)
            for j, rec in enumerate(model.encoder.duo_records()):
                counts[j] += torch.bincount(rec.routing.expert[:, 0], minlength=3).float()
        fractions = counts / counts.sum(1, keepdim=True)
        out[f"{b:g}"] = {n: [round(float(p), 6) for p in row] for n, row in zip(names, fractions)}
        gen = torch.Generator().manual_seed(args.seed)
        learned = [DuoPolicy("learned", cost_bias=bias)] * len(names)
        drawn = [DuoPolicy("random", probs=tuple(float(p) for p in row), generator=gen) for row in fractions]
        steps = {}
        for name, policies in (("learned", learned), ("random_at_mix", drawn)):
            def run(policies=policies):
                model.encoder.set_duo_policies(policies)
                for x, lens in feats:
                    model.forward(x, lens)
            steps[name] = run
        ratio_runs = []
        for _ in range(args.runs):
            times, _ = _bench.time_interleaved(steps, torch.device("cpu"), 1, args.repeats)
            ratio_runs.append(_bench.median(times["random_at_mix"]) / _bench.median(times["learned"]))
        timing[f"{b:g}"] = {"bias": bias, "random_at_mix_over_learned": ratio_runs}
        print(f"budget {b:g}: bias {bias:g}, random at the mix / learned: {', '.join(f'{r:.3f}' for r in ratio_runs)}")
    write_json(args.out, {"benchmark": "duo_mix", "command": " ".join(["benchmarks/duo_speed.py"] + sys.argv[1:]),
                          "commit": _bench.git_commit(), "study": args.study, "stage2": model_path(stage2),
                          "set": args.set, "utts": len(feats), "blocks": len(model.encoder.encoders),
                          "mix": out, "timing": timing, "threads": args.threads, "runs": args.runs,
                          "repeats": args.repeats})


def main(argv=None):
    from encoder_infer import parse_case

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    m = sub.add_parser("mix", help="the trained routers' per-slot path mix")
    m.add_argument("--study", required=True, help="a duo.py JSON (its stage-2 model and calibrated biases)")
    m.add_argument("--data", default="dump/raw", help="the recipe's data directory")
    m.add_argument("--set", default="test_seen")
    m.add_argument("--utts", type=int, default=50)
    m.add_argument("--budgets", type=float, nargs="+", default=[0.5, 0.25])
    m.add_argument("--repeats", type=int, default=3)
    sp = sub.add_parser("speed", help="the speed study")
    sp.add_argument("--mix", required=True, help="the JSON of the mix command")
    sp.add_argument("--sizes", type=lambda t: t.split(","), default=list(SIZES))
    sp.add_argument("--cases", type=parse_case, nargs="+", default=[parse_case(c) for c in ("1x5", "1x10", "8x5")])
    sp.add_argument("--warmup", type=int, default=2)
    sp.add_argument("--repeats", type=int, default=7)
    sp.add_argument("--quiet-psi", type=float, default=0.0)
    sp.add_argument("--quiet-wait-s", type=float, default=60.0)
    sp.add_argument("--quiet-retries", type=int, default=2)
    for p in (m, sp):
        p.add_argument("--runs", type=int, default=3, help="interleaved runs (the worst is reported)")
        p.add_argument("--threads", type=int, default=2)
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    if args.command == "speed":
        bad = [s for s in args.sizes if s not in SIZES]
        if bad:
            parser.error(f"--sizes: unknown {bad}; choose from {list(SIZES)}")
        speed(args)
    else:
        measure_mix(args)


if __name__ == "__main__":
    main()
