#!/usr/bin/env python3
"""Duo study: WER against FFN compute for each decoding policy, with measured CPU speed.

    cd egs2/synth_en/asr1 && python ../../../benchmarks/duo.py \\
        --stage1 exp/asr_train_asr_duo_conformer_raw_char_max_epoch9 \\
        --stage2 exp/asr_duo_router_b0.5 --out ../../../benchmarks/results/duo.json

For a stage-1 Duo model (random routing) and its stage-2 model (learned routers), on the
recipe's ``dump/raw/<set>`` data (relative paths from the recipe directory), it measures
greedy CTC decoding (the encoder is the cost; beam search with an attention decoder would hide
it) of these points, at each budget of ``--budgets``:

* ``big``, ``small``: every slot on one path (compute 1 and 1/16);
* ``static``: the static pattern found by greedy descent
  (:mod:`espnet_omnirouter.inference.duo_search`) on the reference CTC loss of ``--dev_utts``
  utterances of the dev set;
* ``random``: the best on the same dev utterances of ``--random_patterns`` random static
  patterns whose compute is within 0.1 below the budget;
* ``learned``: the stage-2 routers with the cost bias that meets the budget on the dev
  utterances (bisection; bias 0 = the router as trained is reported as its own point);
* ``oracle``: per test utterance, the pattern found by greedy descent on that utterance's own
  reference CTC loss (not deployable: it reads the transcript), on the first
  ``--oracle_utts`` utterances of each test set; every other point's WER is also given on
  the same utterances.

Compute = mean over slots and non-padded frames of the relative FFN cost of the path taken
(big 1, small ``h_s / h``, skip 0), counted.  Speed = wall time of encoder forward plus greedy
CTC at batch 1 (front-end included) over ``--rtf_utts`` test_seen utterances, every point and
a dense Conformer (``--dense_config``, same size; random weights: time does not depend on
them) interleaved per utterance, median of ``--repeats`` rounds.

Writes the JSON that ``benchmarks/duo_report.py`` turns into duo.md and duo_pareto.png.
"""
import argparse
import json
import os
import random
import statistics
import sys
import time
from typing import Callable, Dict, List, Optional, Sequence

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _bench import git_commit, machine_info  # noqa: E402
from _report import checkout_relative, write_json  # noqa: E402
from encoder_infer import greedy_ctc as greedy  # noqa: E402
from roe import edit_distance  # noqa: E402

TESTS = ["test_seen", "test_unseen_voice", "test_noisy", "test_tempo", "test_real"]


def model_path(exp: str) -> str:
    """``exp`` as written into the JSON: relative to the repository root when it is in a checkout."""
    return checkout_relative(os.path.abspath(exp))


def read_set(data_dir: str, name: str, limit: Optional[int] = None):
    """(utt ids, waveforms, reference texts) of ``data_dir/name`` (wav.scp + text)."""
    import soundfile

    base = os.path.join(data_dir, name)
    for f in ("wav.scp", "text"):
        if not os.path.isfile(os.path.join(base, f)):
            raise SystemExit(f"{base}/{f} not found (run the recipe's stages 1-3, from the recipe directory)")
    texts = {}
    with open(os.path.join(base, "text")) as f:
        for line in f:
            utt, _, text = line.rstrip("\n").partition(" ")
            texts[utt] = text
    utts, wavs = [], []
    with open(os.path.join(base, "wav.scp")) as f:
        for n, line in enumerate(f, 1):
            fields = line.split()
            if len(fields) != 2:
                raise SystemExit(f"{base}/wav.scp:{n}: expected 'ID PATH', got {line.strip()!r}")
            if fields[0] not in texts:
                raise SystemExit(f"{base}/wav.scp:{n}: {fields[0]} has no line in {base}/text")
            audio, rate = soundfile.read(fields[1], dtype="float32")
            if rate != 16000:
                raise SystemExit(f"{fields[1]}: {rate} Hz, expected 16000")
            utts.append(fields[0])
            wavs.append(torch.from_numpy(audio if audio.ndim == 1 else audio.mean(1)))
            if limit is not None and len(utts) == limit:
                break
    return utts, wavs, [texts[u] for u in utts]


class Model:
    """A trained ESPnet ASR model with batched features, CTC loss and greedy CTC."""

    def __init__(self, exp_dir: str, checkpoint: str):
        import espnet_omnirouter  # noqa: F401
        from espnet2.tasks.asr import ASRTask

        for name in ("config.yaml", checkpoint):
            if not os.path.isfile(os.path.join(exp_dir, name)):
                raise SystemExit(f"{exp_dir}: {name} not found")
        self.model, args = ASRTask.build_model_from_file(
            os.path.join(exp_dir, "config.yaml"), os.path.join(exp_dir, checkpoint), "cpu"
        )
        self.model.eval()
        self.tokens = list(args.token_list)
        self.index = {t: i for i, t in enumerate(self.tokens)}
        self.encoder = self.model.encoder

    @torch.inference_mode()
    def features(self, wavs: Sequence[torch.Tensor]):
        """Padded normalised features ``[B, T, F]`` and their lengths."""
        lengths = torch.tensor([w.numel() for w in wavs])
        speech = torch.nn.utils.rnn.pad_sequence(list(wavs), batch_first=True)
        feats, flens = self.model._extract_feats(speech, lengths)
        if self.model.normalize is not None:
            feats, flens = self.model.normalize(feats, flens)
        return feats, flens

    def targets(self, text: str) -> List[int]:
        unk = self.index["<unk>"]
        return [self.index.get("<space>" if c == " " else c, unk) for c in text]

    @torch.inference_mode()
    def forward(self, feats, flens):
        """CTC log-posteriors ``[B, T', V]`` and lengths of features."""
        enc, elens, _ = self.encoder(feats, flens)
        return self.model.ctc.log_softmax(enc), elens

    def text(self, ids: List[int]) -> str:
        return "".join(" " if self.tokens[i] == "<space>" else self.tokens[i] for i in ids).strip()


def ctc_losses(logp, elens, targets: List[List[int]]) -> List[float]:
    flat = torch.tensor([t for tt in targets for t in tt], dtype=torch.long)
    tlens = torch.tensor([len(t) for t in targets])
    loss = torch.nn.functional.ctc_loss(logp.transpose(0, 1), flat, elens, tlens, reduction="none", zero_infinity=True)
    return loss.tolist()


def word_errors(ref: str, hyp: str) -> int:
    return edit_distance(ref.split(), hyp.split())


class Study:
    """Decoding of one Duo model's sets under policies, batched by length."""

    def __init__(self, model: Model, batch: int):
        from espnet_omnirouter.moe import PATHS, DuoPolicy, duo_stats

        self.m, self.batch = model, batch
        self.DuoPolicy, self.duo_stats, self.PATHS = DuoPolicy, duo_stats, PATHS
        self.costs = [float(c) for c in model.encoder.duo_costs()]
        self.num_slots = len(model.encoder.duo_names)
        self.cache = {}

    def feats(self, key, wavs):
        if key not in self.cache:
            self.cache[key] = [self.m.features([w]) for w in wavs]
        return self.cache[key]

    def set_patterns(self, patterns: Sequence[str]):
        """One static pattern per batch element."""
        letters = {"B": 0, "S": 1, "K": 2}
        policies = []
        for s in range(self.num_slots):
            paths = [letters[p[s]] for p in patterns]
            # one path for the whole batch: an int (the slot runs it directly, no dispatch)
            policies.append(self.DuoPolicy("fixed", path=paths[0] if len(set(paths)) == 1 else torch.tensor(paths)))
        self.m.encoder.set_duo_policies(policies)

    def set_learned(self, bias: float):
        self.m.encoder.set_duo_policies([self.DuoPolicy("learned", cost_bias=bias)] * self.num_slots)

    def run(self, feats: List, order: List[int], setter: Callable[[List[int]], None]):
        """Forward utterances ``order`` in batches; ``setter(batch indices)`` sets the policy.
        Returns per utterance (log-posteriors, length) and the frame-weighted compute."""
        out, compute, frames = {}, 0.0, 0
        order = sorted(order, key=lambda i: -feats[i][1][0])
        for start in range(0, len(order), self.batch):
            idx = order[start : start + self.batch]
            x = torch.nn.utils.rnn.pad_sequence([feats[i][0][0] for i in idx], batch_first=True)
            lens = torch.cat([feats[i][1] for i in idx])
            setter(idx)
            logp, elens = self.m.forward(x, lens)
            n = int(elens.sum())
            compute += float(self.duo_stats(self.m.encoder.duo_records(), self.m.encoder.duo_costs())["duo_compute"]) * n
            frames += n
            for j, i in enumerate(idx):
                out[i] = (logp[j : j + 1, : elens[j]], elens[j : j + 1])
        return out, compute / max(frames, 1)

    def losses(self, feats, targets, items: List[tuple]) -> List[float]:
        """Reference CTC loss of each (utterance index, pattern) item."""
        batches = {}
        for k, (i, pattern) in enumerate(items):
            batches.setdefault(pattern, []).append((k, i))
        out = [0.0] * len(items)
        flat = [(k, i, p) for p, ki in batches.items() for k, i in ki]
        flat.sort(key=lambda t: -feats[t[1]][1][0])
        for start in range(0, len(flat), self.batch):
            chunk = flat[start : start + self.batch]
            x = torch.nn.utils.rnn.pad_sequence([feats[i][0][0] for _, i, _ in chunk], batch_first=True)
            lens = torch.cat([feats[i][1] for _, i, _ in chunk])
            self.set_patterns([p for _, _, p in chunk])
            logp, elens = self.m.forward(x, lens)
            for (k, i, _), loss in zip(chunk, ctc_losses(logp, elens, [targets[i] for _, i, _ in chunk])):
                out[k] = loss
        return out

    def decode(self, feats, texts, setter, order=None):
        """Per-utterance word errors and the compute of a policy."""
        order = list(range(len(feats))) if order is None else order
        post, compute = self.run(feats, order, setter)
        errors = {i: word_errors(texts[i], self.m.text(greedy(*post[i])[0])) for i in order}
        return errors, compute


def wer(errors: Dict[int, int], words: Dict[int, int], subset=None) -> float:
    keys = list(errors) if subset is None else [k for k in subset if k in errors]
    return 100.0 * sum(errors[k] for k in keys) / max(sum(words[k] for k in keys), 1)


def calibrate_bias(study: Study, feats, budget: float, steps: int = 10) -> tuple:
    """Cost bias whose learned-policy compute on ``feats`` is closest to ``budget`` from
    below (bisection over [-10, 10]); returns (bias, compute)."""
    order = list(range(len(feats)))
    lo, hi = -10.0, 10.0

    def compute(bias):
        study.set_learned(bias)
        return study.run(feats, order, lambda idx: None)[1]

    best = (hi, compute(hi))
    for _ in range(steps):
        mid = (lo + hi) / 2
        c = compute(mid)
        if c <= budget + 1e-6:
            best, hi = (mid, c), mid
        else:
            lo = mid
    return best


def run_study(args, s1, s2, stage1, rng, t_start):
    """The searches and the decodes of every point: (points, results, oracle patterns,
    learned biases, dev utterance indices)."""
    from espnet_omnirouter.inference.duo_search import greedy_descent, pattern_cost

    costs, num_slots = s1.costs, s1.num_slots
    dev_utts, dev_wavs, dev_texts = read_set(args.data, args.dev, args.dev_utts)
    dev_feats = s1.feats("dev", dev_wavs)
    dev_targets = [stage1.targets(t) for t in dev_texts]
    dev_order = list(range(len(dev_feats)))

    def dev_loss(patterns):
        items = [(i, pat) for pat in patterns for i in dev_order]
        losses = s1.losses(dev_feats, dev_targets, items)
        n = len(dev_order)
        return [sum(losses[k * n : (k + 1) * n]) / n for k in range(len(patterns))]

    print(f"# static search on {len(dev_order)} dev utterances", flush=True)
    static = greedy_descent(num_slots, costs, args.budgets, dev_loss)
    print({b: pat for b, (pat, _) in static.items()}, flush=True)

    randoms = {}
    for b in args.budgets:
        pool = []
        for _ in range(20000):
            pat = "".join(rng.choice("BSK") for _ in range(num_slots))
            if b - 0.1 < pattern_cost(pat, costs) <= b + 1e-9:
                pool.append(pat)
            if len(pool) == args.random_patterns:
                break
        if b >= 1.0:
            pool = ["B" * num_slots]
        losses = dev_loss(pool) if pool else []
        randoms[b] = min(zip(losses, pool))[1] if pool else None
        print(f"# random b={b}: best of {len(pool)}: {randoms[b]}", flush=True)

    dev2 = s2.feats("dev", dev_wavs)
    biases = {b: calibrate_bias(s2, dev2, b) for b in args.budgets}
    print(f"# learned cost biases: {biases}", flush=True)

    points = {"big": {"budget": None, "policy": "big"}, "small": {"budget": None, "policy": "small"},
              "learned": {"budget": None, "policy": "learned", "bias": 0.0}}
    for b in args.budgets:
        points[f"static@{b:g}"] = {"budget": b, "policy": "static", "pattern": static[b][0]}
        if randoms[b]:
            points[f"random@{b:g}"] = {"budget": b, "policy": "random", "pattern": randoms[b]}
        points[f"learned@{b:g}"] = {"budget": b, "policy": "learned", "bias": biases[b][0]}
        points[f"oracle@{b:g}"] = {"budget": b, "policy": "oracle"}

    setter = policy_setter(num_slots)

    results = {name: {"sets": {}} for name in points}
    oracle_patterns = {}
    for test in args.test_sets:
        utts, wavs, texts = read_set(args.data, test)
        words = {i: len(t.split()) for i, t in enumerate(texts)}
        f1, f2 = s1.feats(test, wavs), s2.feats(test, wavs)
        subset = list(range(min(args.oracle_utts, len(utts))))
        print(f"# {test}: {len(utts)} utterances; oracle on {len(subset)}", flush=True)
        per_utt = {b: {} for b in args.budgets}
        targets = [stage1.targets(t) for t in texts]
        for i in subset:
            found = greedy_descent(num_slots, costs, args.budgets, lambda pats: s1.losses(f1, targets, [(i, q) for q in pats]))
            for b in args.budgets:
                per_utt[b][i] = found[b][0]
        oracle_patterns[test] = {b: [per_utt[b][i] for i in subset] for b in args.budgets}
        for name, point in points.items():
            if point["policy"] == "oracle":
                b = point["budget"]
                errors, compute = s1.decode(f1, texts, lambda idx: s1.set_patterns([per_utt[b][i] for i in idx]), subset)
            elif point["policy"] == "learned":
                errors, compute = s2.decode(f2, texts, setter(s2, point))
            else:
                errors, compute = s1.decode(f1, texts, setter(s1, point))
            results[name]["sets"][test] = {
                "wer": wer(errors, words) if point["policy"] != "oracle" else None,
                "wer_oracle_subset": wer(errors, words, subset),
                "compute": compute,
                "utts": len(errors),
            }
        print(f"# {test} done at {time.time() - t_start:.0f} s", flush=True)

    return points, results, oracle_patterns, biases, dev_order


def policy_setter(num_slots):
    def setter(study, point):
        if point["policy"] in ("big", "small"):
            pat = ("B" if point["policy"] == "big" else "S") * num_slots
            return lambda idx: study.set_patterns([pat] * len(idx))
        if point["policy"] in ("static", "random"):
            return lambda idx: study.set_patterns([point["pattern"]] * len(idx))
        return lambda idx: study.set_learned(point["bias"])

    return setter


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--stage1", required=True, help="exp dir of the stage-1 (random routing) Duo model")
    p.add_argument("--stage2", required=True, help="exp dir of the stage-2 (learned routers) Duo model")
    p.add_argument("--checkpoint", default="valid.acc.ave.pth")
    p.add_argument("--data", default="dump/raw", help="data root with <set>/wav.scp and <set>/text")
    p.add_argument("--dev", default="dev")
    p.add_argument("--test_sets", nargs="+", default=TESTS)
    p.add_argument("--budgets", type=float, nargs="+", default=[1.0, 0.75, 0.5, 0.25])
    p.add_argument("--dev_utts", type=int, default=40, help="dev utterances of the pattern searches and calibration")
    p.add_argument("--oracle_utts", type=int, default=30, help="utterances per test set of the per-utterance oracle")
    p.add_argument("--random_patterns", type=int, default=10)
    p.add_argument("--rtf_utts", type=int, default=12)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--dense_config", default=None, help="dense Conformer config for the speed reference")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--speed_from", default=None,
                   help="a JSON of an earlier run: measure only the speed of its points again (its WERs, "
                        "patterns and biases are kept, and the JSON says so)")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    for b in args.budgets:
        if not 0.0 <= b <= 1.0:
            raise SystemExit(f"--budgets: {b} is not in [0, 1]")
    torch.set_num_threads(args.threads)
    rng = random.Random(args.seed)
    t_start = time.time()

    stage1, stage2 = Model(args.stage1, args.checkpoint), Model(args.stage2, args.checkpoint)
    s1, s2 = Study(stage1, args.batch), Study(stage2, args.batch)
    costs, num_slots = s1.costs, s1.num_slots
    if args.speed_from:
        with open(args.speed_from) as f:
            earlier = json.load(f)
        points, results = earlier["points"], earlier["results"]
        oracle_patterns = {t: {float(b): v for b, v in d.items()} for t, d in earlier["oracle_patterns"].items()}
        biases = {float(b): (v["bias"], v["dev_compute"]) for b, v in earlier["learned_bias"].items()}
        dev_order = list(range(earlier["dev"]["utts"]))
        args.budgets, args.dev = earlier["budgets"], earlier["dev"]["set"]
        args.oracle_utts, args.random_patterns = earlier["oracle_utts"], earlier["random_patterns"]
        if (earlier["stage1"], earlier["stage2"]) != (model_path(args.stage1), model_path(args.stage2)):
            raise SystemExit(f"--speed_from {args.speed_from}: measured other models ({earlier['stage1']}, {earlier['stage2']})")
    else:
        points, results, oracle_patterns, biases, dev_order = run_study(args, s1, s2, stage1, rng, t_start)
    setter = policy_setter(num_slots)

    # Speed: batch 1, encoder + greedy CTC from the waveform, interleaved per utterance.
    utts, wavs, texts = read_set(args.data, args.test_sets[0], args.rtf_utts)
    timed = {}
    dense = None
    if args.dense_config:
        from espnet2.tasks.asr import ASRTask  # (our encoders are registered: Model imported the plugin)

        dargs = ASRTask.get_parser().parse_args(["--config", args.dense_config])
        dargs.token_list = list(stage1.tokens)  # the Duo model's vocabulary: the same output layer
        dense = ASRTask.build_model(dargs).eval()

    def step(model, wav):
        with torch.inference_mode():
            speech = wav.unsqueeze(0)
            enc, elens = model.encode(speech, torch.tensor([wav.numel()]))
            greedy(model.ctc.log_softmax(enc), elens)

    rtf_names = [n for n, pt in points.items() if pt["policy"] != "oracle"]
    per_point = {n: [] for n in rtf_names + (["dense"] if dense is not None else [])}
    oracle_rtf = {b: [] for b in args.budgets}
    first_oracle = oracle_patterns.get(args.test_sets[0], {})
    seconds = sum(w.numel() for w in wavs) / 16000
    for r in range(args.repeats + 1):
        totals = {n: 0.0 for n in per_point}
        o_totals = {b: 0.0 for b in args.budgets}
        for u, wav in enumerate(wavs):
            for name in per_point:
                if name == "dense":
                    model = dense
                else:
                    point = points[name]
                    study = s2 if point["policy"] == "learned" else s1
                    setter(study, point)([0])
                    model = study.m.model
                t0 = time.perf_counter()
                step(model, wav)
                totals[name] += time.perf_counter() - t0
            for b in args.budgets:
                pats = first_oracle.get(b, [])
                if u < len(pats):
                    s1.set_patterns([pats[u]])
                    t0 = time.perf_counter()
                    step(s1.m.model, wav)
                    o_totals[b] += time.perf_counter() - t0
        if r == 0:
            continue  # warm-up
        for n, t in totals.items():
            per_point[n].append(t)
        for b, t in o_totals.items():
            oracle_rtf[b].append(t)
    oracle_seconds = sum(w.numel() for w in wavs[: len(next(iter(first_oracle.values()), []))]) / 16000
    for n, ts in per_point.items():
        timed[n] = {"rtf": statistics.median(ts) / seconds}
    for b, ts in oracle_rtf.items():
        if ts and oracle_seconds > 0:
            timed[f"oracle@{b:g}"] = {"rtf": statistics.median(ts) / oracle_seconds, "utts": len(first_oracle[b])}

    payload = {
        "command": " ".join(["benchmarks/duo.py"] + (argv if argv is not None else sys.argv[1:])),
        "commit": git_commit(),
        "machine": machine_info(torch.device("cpu")),
        "threads": args.threads,
        "stage1": model_path(args.stage1),
        "stage2": model_path(args.stage2),
        "checkpoint": args.checkpoint,
        "costs": costs,
        "slots": list(stage1.encoder.duo_names),
        "budgets": args.budgets,
        "dev": {"set": args.dev, "utts": len(dev_order)},
        "oracle_utts": args.oracle_utts,
        "random_patterns": args.random_patterns,
        "learned_bias": {f"{b:g}": {"bias": v[0], "dev_compute": v[1]} for b, v in biases.items()},
        "points": points,
        "results": results,
        "oracle_patterns": {t: {f"{b:g}": v for b, v in d.items()} for t, d in oracle_patterns.items()},
        "speed": {"set": args.test_sets[0], "utts": len(wavs), "seconds": seconds, "repeats": args.repeats,
                  "dense_config": args.dense_config, "rtf": timed},
        "wall_s": time.time() - t_start,
    }
    if args.speed_from:  # what was not measured again
        payload["wers_from"] = {k: earlier.get(k) for k in ("command", "commit")}
    write_json(args.out, payload)


if __name__ == "__main__":
    main()
