"""Decoding-time encoder cost: dense vs Switch vs Omni-router Conformer, eval mode.

The encoders come from the recipe configs (as in ``encoder_step.py``): d=144, 6 blocks,
FFN 576, macaron; the MoE ones with 8 top-1 experts in every FFN.  Each case is one fixed
batch of 80-dim features at 100 frames/s (``--cases``: ``BATCHxSECONDS``), run under
``torch.inference_mode`` in eval mode, as ``espnet2.bin.asr_inference`` runs the encoder.
Per encoder two steps are timed, all interleaved in one process (see ``_bench.py``):

* ``forward``: the encoder forward;
* ``greedy``: the forward plus greedy CTC decoding (a ``d -> vocab`` CTC head,
  log-softmax, argmax, collapse repeats, drop blanks, per utterance): a decoder whose
  cost is the encoder's.

``--impls`` adds each MoE encoder again with its experts forced onto one implementation
(``Experts.impl``, e.g. ``loop``: the per-slice loop that CPU inference used before the
padded path), so that a before/after stands in the same run; its output is compared
with the automatic choice's (``max_abs_diff_vs_auto``).  Each MoE encoder's
``pad_waste`` is the padded path's ``E * max slice / frames``, averaged over its FFNs.

By default the encoders are freshly initialised and the input is random features: the
cost of an untrained router's routing, which sends most frames of an utterance to one or two
experts (``pad_waste`` 3.5-4).  ``--exp KEY=DIR`` takes the encoder (and its CTC head) of a
trained model instead (``DIR/config.yaml`` and ``DIR/--checkpoint``), and ``--audio
wav.scp`` real speech (run from the recipe directory): the recordings are joined into one stream and each utterance of a
case is a different stretch of it, turned into features by the front-end and
normalisation of the first ``--exp`` model (outside the timing), as decoding sees them.
A dense encoder's cost does not depend on its weights, so ``dense`` may stay untrained.
``--encoders`` times a subset (e.g. ``dense,omni`` when only those were trained).

``--duo-config`` adds a Duo Conformer (freshly initialised), once per ``--duo-policies``
entry: ``big``, ``small`` or ``static:PATTERN`` (one letter per slot, ``B``/``S``/``K``), the
fixed decoding policies of ``espnet_omnirouter.inference.duo``, whose cost does not depend on
trained weights (a learned router's choices do: ``benchmarks/duo.py`` times those).

``--runs N`` times each case N times, one interleaved run after the other: the JSON keeps every
run's medians and the table gives, per variant, the worst run's ratio to dense (the dense time
of the first run).

    python benchmarks/encoder_infer.py --out benchmarks/results/encoder_infer.json
"""
import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _bench  # noqa: E402
from _report import infer_table, write_json  # noqa: E402
from encoder_step import DEFAULT_CONFIGS, load_encoder  # noqa: E402

from espnet_omnirouter.inference.duo import DuoDecodeConfig, slot_policies  # noqa: E402
from espnet_omnirouter.moe.duo import duo_stats  # noqa: E402


def parse_case(text):
    """``"8x10"`` -> (8, 10.0): batch size and seconds of audio per utterance."""
    try:
        batch, seconds = text.lower().split("x")
        return int(batch), float(seconds)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--cases: expected BATCHxSECONDS such as 1x5, got {text!r}")


def greedy_ctc(logp, lengths, blank=0):
    """Token ids of each utterance of ``logp`` ``[B, T, V]`` (``lengths``: its ``B`` frame
    counts): argmax, repeats collapsed, blanks removed."""
    best = logp.argmax(-1)
    return [[t for t in torch.unique_consecutive(b[:n]).tolist() if t != blank] for b, n in zip(best, lengths)]


def parse_exp(text):
    """``"omni=exp/asr_x"`` -> ("omni", "exp/asr_x")."""
    key, sep, path = text.partition("=")
    if not sep or key not in DEFAULT_CONFIGS:
        raise argparse.ArgumentTypeError(f"--exp: expected KEY=DIR with KEY in {list(DEFAULT_CONFIGS)}, got {text!r}")
    return key, path


def parse_encoders(text):
    """``"dense,omni"`` -> ["dense", "omni"]: the encoders to time (dense always among them)."""
    keys = [k for k in text.split(",") if k]
    bad = [k for k in keys if k not in DEFAULT_CONFIGS]
    if bad or "dense" not in keys or len(set(keys)) != len(keys):
        raise argparse.ArgumentTypeError(
            f"--encoders: expected distinct names from {list(DEFAULT_CONFIGS)} including dense, got {text!r}"
        )
    return keys


def parse_duo_policy(text):
    """``"big"``, ``"small"`` or ``"static:BSK..."`` -> a checked ``DuoDecodeConfig``."""
    policy, _, pattern = text.partition(":")
    if policy not in ("big", "small", "static"):
        raise argparse.ArgumentTypeError(f"--duo-policies: expected big, small or static:PATTERN, got {text!r}")
    try:
        return DuoDecodeConfig(policy=policy, pattern=pattern or None)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"--duo-policies {text!r}: {e}")


def load_model(exp_dir, checkpoint):
    """The ESPnet ASR model trained in ``exp_dir`` (eval mode)."""
    import espnet_omnirouter  # noqa: F401  (registers our encoders and model)
    from espnet2.tasks.asr import ASRTask

    for name in ("config.yaml", checkpoint):
        if not os.path.isfile(os.path.join(exp_dir, name)):
            raise SystemExit(f"--exp {exp_dir}: {name} not found")
    model, _ = ASRTask.build_model_from_file(
        os.path.join(exp_dir, "config.yaml"), os.path.join(exp_dir, checkpoint), "cpu"
    )
    return model.eval()


def speech_stream(wav_scp):
    """The recordings of a Kaldi-style ``wav.scp`` (``ID PATH`` lines, 16 kHz; relative
    paths from the current directory, as in a recipe), joined."""
    import numpy as np
    import soundfile

    parts = []
    with open(wav_scp) as f:
        for n, line in enumerate(f, 1):
            fields = line.split()
            if len(fields) != 2:
                raise SystemExit(f"{wav_scp}:{n}: expected 'ID PATH', got {line.strip()!r}")
            if not os.path.isfile(fields[1]):  # relative paths: to the current directory (Kaldi's)
                raise SystemExit(f"{wav_scp}:{n}: {fields[1]} not found (from {os.getcwd()})")
            audio, rate = soundfile.read(fields[1], dtype="float32")
            if rate != 16000:
                raise SystemExit(f"{wav_scp}:{n}: {fields[1]} is {rate} Hz, expected 16000")
            parts.append(audio if audio.ndim == 1 else audio.mean(1))
    return torch.from_numpy(np.concatenate(parts))


def real_features(model, stream, batch, seconds, offset):
    """``batch`` stretches of ``seconds`` of ``stream`` from sample ``offset`` on, as
    normalised features ``[batch, T, F]`` (the model's front-end and normalisation)."""
    n = int(round(seconds * 16000))
    if offset + batch * n > stream.numel():
        raise SystemExit(f"--audio holds {stream.numel() / 16000:.0f} s, the cases need more")
    speech = stream[offset : offset + batch * n].view(batch, n)
    lengths = torch.full((batch,), n, dtype=torch.long)
    with torch.inference_mode():
        feats, flens = model._extract_feats(speech, lengths)
        if model.normalize is not None:
            feats, flens = model.normalize(feats, flens)
    return feats.clone(), flens.clone()


def pad_waste(encoder):
    """Mean over the MoE FFNs of ``E * largest slice / frames`` in the last forward."""
    ratios = []
    for ffn in encoder.moe_ffns():
        expert = ffn.last.routing.expert.reshape(-1)
        counts = torch.bincount(expert, minlength=ffn.router.num_experts)
        ratios.append(float(counts.max()) * counts.numel() / expert.numel())
    return sum(ratios) / len(ratios)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for key, path in DEFAULT_CONFIGS.items():
        parser.add_argument(f"--{key}-config", default=path)
    parser.add_argument(
        "--cases", type=parse_case, nargs="+", default=[parse_case(c) for c in ("1x2", "1x5", "1x10", "1x20", "8x10")]
    )
    parser.add_argument("--encoders", type=parse_encoders, default=list(DEFAULT_CONFIGS), help="comma-separated")
    parser.add_argument("--duo-config", default=None, help="a Duo Conformer config: also time its policies")
    parser.add_argument("--duo-policies", type=lambda t: [parse_duo_policy(p) for p in t.split(",") if p],
                        default="big,small", help="comma-separated: big, small, static:PATTERN")
    parser.add_argument("--impls", default="loop", help="comma-separated Experts.impl values also timed ('' = none)")
    parser.add_argument("--vocab", type=int, default=32, help="CTC output size (characters + blank)")
    parser.add_argument("--feat-dim", type=int, default=80)
    parser.add_argument("--exp", type=parse_exp, action="append", default=[], help="KEY=DIR: a trained model's encoder")
    parser.add_argument("--checkpoint", default="valid.acc.ave.pth", help="checkpoint file name in each --exp DIR")
    parser.add_argument("--audio", default=None, help="wav.scp of real speech for the inputs (needs an --exp)")
    parser.add_argument("--runs", type=int, default=1,
                        help="interleaved runs of each case (the table gives each ratio's worst run)")
    _bench.add_common_args(parser, warmup=3)
    parser.set_defaults(repeats=15, device="cpu")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error(f"--runs must be >= 1, got {args.runs}")

    torch.set_num_threads(args.threads)
    device = _bench.pick_device(args.device)
    info = _bench.machine_info(device)
    torch.manual_seed(args.seed)
    encoders, configs, heads = {}, {}, {}
    trained = dict(args.exp)
    if args.audio and not trained:
        parser.error("--audio needs an --exp model (its front-end makes the features)")
    if set(trained) - set(args.encoders):
        parser.error(f"--exp {', '.join(set(trained) - set(args.encoders))}: not among --encoders {args.encoders}")
    models = {key: load_model(path, args.checkpoint) for key, path in trained.items()}
    for key in args.encoders:
        if key in models:
            encoders[key], heads[key] = models[key].encoder.to(device), models[key].ctc.log_softmax
            configs[key] = dict(exp=trained[key], checkpoint=args.checkpoint, encoder=type(encoders[key]).__name__)
            continue
        path = getattr(args, f"{key}_config")
        name, conf, enc = load_encoder(path, args.feat_dim)
        encoders[key] = enc.to(device).eval()
        configs[key] = dict(config=path, encoder=name, encoder_conf=conf)
    duo = {}  # variant name -> its policy per Duo slot
    if args.duo_config:
        name, conf, enc = load_encoder(args.duo_config, args.feat_dim)
        if not hasattr(enc, "set_duo_policies"):
            parser.error(f"--duo-config {args.duo_config}: encoder {name!r} is not a Duo encoder")
        encoders["duo"] = enc.to(device).eval()
        configs["duo"] = dict(config=args.duo_config, encoder=name, encoder_conf=conf)
        for c in args.duo_policies:
            try:
                duo[f"duo_{c.tag()}"] = slot_policies(enc, c)
            except ValueError as e:
                parser.error(f"--duo-policies: {e}")
        if len(duo) != len(args.duo_policies):
            parser.error(f"--duo-policies: a policy is given twice: {[c.tag() for c in args.duo_policies]}")
    stream = speech_stream(args.audio) if args.audio else None
    impls = [i for i in args.impls.split(",") if i]
    moe = [k for k in encoders if hasattr(encoders[k], "moe_ffns")]
    variants = {k: (k, None) for k in encoders if k != "duo"}
    variants.update({name: ("duo", None) for name in duo})
    for impl in impls:
        variants.update({f"{k}_{impl}": (k, impl) for k in moe})
    ctc = torch.nn.Linear(encoders["dense"].output_size(), args.vocab).to(device).eval()
    for key in encoders:
        heads.setdefault(key, lambda h: ctc(h).log_softmax(-1))
    print(
        f"# encoder_infer: {info['device_name']} | torch {info['torch']} | threads {torch.get_num_threads()} "
        f"| fp32 inference_mode | warmup {args.warmup} repeats {args.repeats} | variants {', '.join(variants)}"
    )

    def set_impl(enc, impl):
        for ffn in getattr(enc, "moe_ffns", list)():
            ffn.experts.impl = impl or "auto"

    def set_policy(enc, name):
        if name in duo:
            enc.set_duo_policies(duo[name])

    def make_steps(xs, ilens):
        steps = {}
        for name, (key, impl) in variants.items():
            enc = encoders[key]

            def forward(enc=enc, impl=impl, name=name):
                set_impl(enc, impl)
                set_policy(enc, name)
                with torch.inference_mode():
                    return enc(xs, ilens)

            def greedy(forward=forward, head=heads[key]):
                out, olens, _ = forward()
                with torch.inference_mode():
                    return greedy_ctc(head(out), olens.tolist())

            steps[f"{name}/forward"], steps[f"{name}/greedy"] = forward, greedy
        return steps

    t0 = time.time()
    cases = []
    offset = 0
    for batch, seconds in args.cases:
        if stream is None:
            frames = int(round(seconds * 100))
            xs = torch.randn(batch, frames, args.feat_dim, device=device)
            ilens = torch.full((batch,), frames, dtype=torch.long, device=device)
        else:
            xs, ilens = real_features(next(iter(models.values())), stream, batch, seconds, offset)
            xs, ilens = xs.to(device), ilens.to(device)
            offset += batch * int(round(seconds * 16000))
        steps = make_steps(xs, ilens)
        runs = [
            _bench.run_quietly(
                lambda: _bench.time_interleaved(steps, device, args.warmup, args.repeats),
                args.quiet_psi, args.quiet_wait_s, args.quiet_retries,
            )
            for _ in range(args.runs)
        ]
        (times, _), load = runs[0]
        case = dict(batch=batch, seconds=seconds, machine_load=load, variants={})
        if args.runs > 1:  # each run's medians; the table gives the worst run's ratios
            case["runs"] = [
                dict(machine_load=run_load, medians_s={
                    f"{name}/{step}": _bench.median(run_times[f"{name}/{step}"])
                    for name in variants for step in ("forward", "greedy")
                })
                for (run_times, _), run_load in runs
            ]
        for name, (key, impl) in variants.items():
            r = {}
            for step in ("forward", "greedy"):
                ts = times[f"{name}/{step}"]
                r[step] = dict(times_s=ts, median_s=_bench.median(ts))
            if key != "dense":  # what the last forward's routing records
                out = steps[f"{name}/forward"]()[0]
                enc = encoders[key]
                if key in moe:
                    r["pad_waste"] = pad_waste(enc)
                    if impl is not None:  # same function as the automatic choice
                        r["max_abs_diff_vs_auto"] = float((out - steps[f"{key}/forward"]()[0]).abs().max())
                else:  # Duo: the FFN compute of that policy, relative to all-big
                    r["duo_compute"] = float(duo_stats(enc.duo_records(), enc.duo_costs())["duo_compute"])
            case["variants"][name] = dict(r, encoder=key, impl=impl or "auto")
        out, _, _ = steps["dense/forward"]()
        case["encoder_frames"] = out.shape[1]
        cases.append(case)
        print(infer_table([case]).splitlines()[-1], flush=True)
    elapsed = time.time() - t0
    print(infer_table(cases))
    print(f"# total {elapsed:.0f} s")
    if args.out:
        write_json(
            args.out,
            dict(
                benchmark="encoder_infer",
                machine=info,
                config=dict(
                    vars(args), dtype="fp32 inference_mode", cases=[list(c) for c in args.cases],
                    duo_policies=[c.tag() for c in args.duo_policies],
                    variants=list(variants), elapsed_s=elapsed, configs=configs,
                ),
                cases=cases,
            ),
        )
    return cases


if __name__ == "__main__":
    main()
