"""ONNX deployment: onnxruntime vs PyTorch, dense vs Omni-router (encoder speed, decoding WER and RTF).

1. Encoder speed: the dense and the Omni-router Conformer of the demo (`conf/train_asr_conformer.yaml`,
   `conf/train_asr_omni_router_conformer.yaml`: d 144, FFN 576, 6 blocks, 8 experts), freshly
   initialised, exported by `espnet_omnirouter.export.encoder` and run by onnxruntime (intra-op
   `--threads`, sequential), beside the same modules in PyTorch (`torch.inference_mode`, `--threads`):
   batch 1 at 5 s and 10 s, and batch 8 with lengths spread 5-10 s (padded).  Per run and case, the
   dense and Omni graphs in onnxruntime run interleaved (`_bench.time_interleaved`), then the two
   PyTorch encoders likewise (the two frameworks' thread pools are not interleaved with each other:
   one's spinning threads would slow the other); `--runs` runs, the report gives each and the worst.
2. Decoding (with `--model EXP`): the trained model exported by `espnet_omnirouter.bin.export_onnx`,
   every utterance of `--test_set` decoded by ESPnet's `Speech2Text` and by
   `espnet_omnirouter_onnx.Speech2Text` (blocks of 25 utterances, one backend then the other, order
   alternating), same options
   (`--decode_config`); WER of both (the recipe's scoring: jiwer, white space collapsed), how many
   hypotheses are identical, and the real-time factor of both (decoding time / audio, 2 threads).

    python benchmarks/onnx_runtime.py --out benchmarks/results/onnx_runtime.json \\
        [--model egs2/synth_en/asr1/exp/asr_train_asr_omni_router_conformer_raw_char \\
         --test_set egs2/synth_en/asr1/dump/raw/test_seen --decode_config egs2/synth_en/asr1/conf/decode_asr.yaml]

writes the JSON and, beside it, `onnx_runtime.md` (the report).
"""
import argparse
import os
import sys
import tempfile
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _bench  # noqa: E402
from _report import write_json_and_report  # noqa: E402
from encoder_step import DEFAULT_CONFIGS, load_encoder  # noqa: E402

MODELS = ("dense", "omni")
DECODE_BLOCK = 25  # utterances decoded by one backend before the other takes its turn
CASES = {"b1_5s": [500], "b1_10s": [1000], "b8_5-10s": [int(x) for x in np.linspace(1000, 500, 8)]}


def ort_session(path, threads):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def encoder_speed(args, tmp):
    from espnet_omnirouter.export.encoder import export_encoder

    encoders, sessions = {}, {}
    for key in MODELS:
        torch.manual_seed(args.seed)
        _, _, encoders[key] = load_encoder(getattr(args, f"{key}_config"), args.feat_dim)
        encoders[key].eval()
        path = os.path.join(tmp, f"{key}.onnx")
        export_encoder(encoders[key], path, args.feat_dim)
        sessions[key] = ort_session(path, args.threads)
    device = torch.device("cpu")
    cases = {}
    for case, lengths in CASES.items():
        lens = torch.tensor(lengths)
        feats = torch.randn(len(lengths), max(lengths), args.feat_dim)
        feed = {"feats": feats.numpy(), "feats_length": lens.numpy()}
        groups = {
            "ort": {f"{k}_ort": (lambda s: lambda: s.run(None, feed))(sessions[k]) for k in MODELS},
            "torch": {f"{k}_torch": (lambda e: lambda: e(feats, lens))(encoders[k]) for k in MODELS},
        }
        runs = []
        with torch.inference_mode():
            for _ in range(args.runs):
                ms = {}
                for steps in groups.values():  # each backend's pair interleaved; one after the other
                    times, _ = _bench.time_interleaved(steps, device, args.warmup, args.repeats)
                    ms.update({k: _bench.median(v) * 1e3 for k, v in times.items()})
                run = {"ms": ms, "omni_vs_dense_ort": ms["omni_ort"] / ms["dense_ort"],
                       "omni_vs_dense_torch": ms["omni_torch"] / ms["dense_torch"],
                       "ort_vs_torch_dense": ms["dense_ort"] / ms["dense_torch"],
                       "ort_vs_torch_omni": ms["omni_ort"] / ms["omni_torch"]}
                runs.append(run)
                print(f"{case}: " + ", ".join(f"{k} {v:.1f} ms" for k, v in ms.items())
                      + f"; Omni/dense ORT {run['omni_vs_dense_ort']:.3f}x, PyTorch {run['omni_vs_dense_torch']:.3f}x",
                      flush=True)
        worst = {k: max(r[k] for r in runs) for k in runs[0] if k != "ms"}
        cases[case] = {"lengths_frames": lengths, "runs": runs, "worst": worst}
    return cases


def read_text(path):
    with open(path, encoding="utf-8") as f:
        return dict((p[0], " ".join(p[1].split()) if len(p) > 1 else "")
                    for p in (line.strip().split(maxsplit=1) for line in f) if p)


def decoding(args, tmp):
    import jiwer
    import soundfile
    from espnet_omnirouter.bin.export_onnx import main as export_main
    from espnet_omnirouter.hub import load_speech2text
    from espnet_omnirouter_onnx import Speech2Text as OnnxSpeech2Text
    from espnet_omnirouter_onnx.asr_inference import read_decode_config, read_wav_scp

    out = os.path.join(tmp, "model")
    t0 = time.perf_counter()
    if export_main(["--model", args.model, "--out", out, "--log_level", "WARNING"]) != 0:
        raise SystemExit(f"export of {args.model} failed")
    export_s = time.perf_counter() - t0
    options = read_decode_config(args.decode_config)
    ref = load_speech2text(args.model, **options, device="cpu", lm_train_config=None, lm_file=None)
    ours = OnnxSpeech2Text(out, threads=args.threads, **options)
    refs = read_text(os.path.join(args.test_set, "text"))
    # wav.scp paths are relative to the recipe directory the set was made in (<recipe>/dump/raw/<set>)
    wav_dir = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(args.test_set))))
    entries = read_wav_scp(os.path.join(args.test_set, "wav.scp"))[: args.max_utts]
    hyps = {"torch": {}, "ort": {}}
    seconds = {"torch": 0.0, "ort": 0.0}
    audio_s = 0.0
    wavs = []
    for utt, path in entries:
        wav, fs = soundfile.read(path if os.path.isabs(path) else os.path.join(wav_dir, path), dtype="float32")
        audio_s += len(wav) / fs
        wavs.append((utt, wav))
    # blocks of utterances, each decoded by one backend and then the other (order alternating per
    # block): the two frameworks' thread pools never alternate utterance by utterance
    for b in range(0, len(wavs), DECODE_BLOCK):
        order = [("torch", ref), ("ort", ours)][:: 1 if (b // DECODE_BLOCK) % 2 == 0 else -1]
        for name, decoder in order:
            for utt, wav in wavs[b:b + DECODE_BLOCK]:
                t0 = time.perf_counter()
                with torch.inference_mode():
                    results = decoder(wav)
                seconds[name] += time.perf_counter() - t0
                hyps[name][utt] = " ".join((results[0][0] if results else "").split())
    keys = [u for u, _ in entries]
    wer = {name: 100 * jiwer.wer([refs[k] for k in keys], [hyps[name][k] for k in keys]) for name in hyps}
    same = sum(hyps["torch"][k] == hyps["ort"][k] for k in keys)
    result = {"model": args.model, "test_set": args.test_set, "decode_config": args.decode_config, "options": options,
              "utterances": len(keys), "audio_s": audio_s, "export_s": export_s, "wer": wer,
              "identical_hypotheses": same, "rtf": {k: v / audio_s for k, v in seconds.items()},
              "differing": {k: {"torch": hyps["torch"][k], "ort": hyps["ort"][k]} for k in keys
                            if hyps["torch"][k] != hyps["ort"][k]}}
    print(f"WER PyTorch {wer['torch']:.2f}%, onnxruntime {wer['ort']:.2f}%; {same}/{len(keys)} identical; "
          f"RTF {result['rtf']['torch']:.3f} vs {result['rtf']['ort']:.3f}", flush=True)
    return result


def report(payload) -> str:
    m, c = payload["machine"], payload["config"]
    lines = [
        "# ONNX deployment: onnxruntime vs PyTorch, dense vs Omni-router",
        "",
        f"Generated by `python benchmarks/onnx_runtime.py {c['command_args']}` (commit {m['commit']}, {m['time']}, "
        f"{m['cpu_model']}, {c['threads']} threads; onnxruntime {c['onnxruntime']}, torch {c['torch']}).",
        "",
        "## Encoder speed",
        "",
        f"`{c['configs']['dense']}` and `{c['configs']['omni']}`, freshly initialised (seed {c['seed']}); "
        f"median of {c['repeats']} interleaved rounds per backend and run (dense and Omni interleaved; onnxruntime's "
        f"pair, then PyTorch's), {c['runs']} runs; batch 8 has lengths spread 5-10 s (padded).",
        "",
        "| case | run | dense PyTorch ms | Omni PyTorch ms | dense ORT ms | Omni ORT ms | Omni/dense ORT | "
        "Omni/dense PyTorch | ORT/PyTorch dense | ORT/PyTorch Omni |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for case, res in payload["encoder_speed"].items():
        for i, r in enumerate(res["runs"], 1):
            ms = r["ms"]
            lines.append(f"| {case} | {i} | {ms['dense_torch']:.1f} | {ms['omni_torch']:.1f} | {ms['dense_ort']:.1f} | "
                         f"{ms['omni_ort']:.1f} | {r['omni_vs_dense_ort']:.3f}x | {r['omni_vs_dense_torch']:.3f}x | "
                         f"{r['ort_vs_torch_dense']:.3f}x | {r['ort_vs_torch_omni']:.3f}x |")
        w = res["worst"]
        lines.append(f"| {case} | **worst** | | | | | **{w['omni_vs_dense_ort']:.3f}x** | "
                     f"**{w['omni_vs_dense_torch']:.3f}x** | {w['ort_vs_torch_dense']:.3f}x | {w['ort_vs_torch_omni']:.3f}x |")
    d = payload.get("decoding")
    if d:
        lines += [
            "", "## Decoding a trained model", "",
            f"Model `{d['model']}`, test set `{d['test_set']}` ({d['utterances']} utterances, {d['audio_s']:.0f} s), "
            f"options of `{d['decode_config']}` ({', '.join(f'{k} {v}' for k, v in d['options'].items())}), no LM; "
            f"export took {d['export_s']:.0f} s.", "",
            "| backend | WER % | RTF |", "|---|---|---|",
            f"| PyTorch (ESPnet's Speech2Text) | {d['wer']['torch']:.2f} | {d['rtf']['torch']:.3f} |",
            f"| onnxruntime (espnet_omnirouter_onnx) | {d['wer']['ort']:.2f} | {d['rtf']['ort']:.3f} |", "",
            f"Identical hypotheses: {d['identical_hypotheses']} of {d['utterances']}.",
        ]
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for key in MODELS:
        parser.add_argument(f"--{key}-config", default=DEFAULT_CONFIGS[key])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--feat-dim", type=int, default=80)
    parser.add_argument("--model", default=None, help="trained model (exp dir, zip) to decode both ways")
    parser.add_argument("--test_set", default=None, help="data dir with wav.scp and text")
    parser.add_argument("--decode_config", default=None, help="decode YAML (ESPnet's keys)")
    parser.add_argument("--max_utts", type=int, default=None)
    parser.add_argument("--skip-speed", action="store_true", help="only the decoding part")
    _bench.add_common_args(parser, warmup=2)
    args = parser.parse_args(argv)
    if args.model and not (args.test_set and args.decode_config):
        parser.error("--model needs --test_set and --decode_config")
    torch.set_num_threads(args.threads)
    import onnxruntime

    payload = {"machine": _bench.machine_info(torch.device("cpu")),
               "config": {"command_args": " ".join(argv if argv is not None else sys.argv[1:]),
                          "configs": {k: getattr(args, f"{k}_config") for k in MODELS},
                          "threads": args.threads, "seed": args.seed, "repeats": args.repeats,
                          "warmup": args.warmup, "runs": args.runs, "onnxruntime": onnxruntime.__version__,
                          "torch": torch.__version__}}
    with tempfile.TemporaryDirectory() as tmp:
        if not args.skip_speed:
            payload["encoder_speed"] = encoder_speed(args, tmp)
        if args.model:
            payload["decoding"] = decoding(args, tmp)
    if args.skip_speed:
        payload["encoder_speed"] = {}
    print(report(payload))
    if args.out:
        write_json_and_report(args.out, payload, report(payload))


if __name__ == "__main__":
    main()
