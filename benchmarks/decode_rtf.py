"""End-to-end decoding real-time factor of trained models, side by side in one process.

Each model is loaded as ``espnet2.bin.asr_inference`` loads it (``Speech2Text`` with the
decode YAML, e.g. the demo's joint CTC/attention beam search with the character LM) and
decodes the same utterances one at a time (batch 1, as ``asr_inference`` does), the models
taking turns utterance by utterance so that load from other processes hits them alike.
RTF = summed decoding time / audio duration.  ``--impls`` also decodes each MoE model with
its experts forced onto one implementation (``Experts.impl``, e.g. ``loop``: CPU inference
before the padded path), so that a before/after stands in the same run.  WER is reported
as a check that the models are the trained ones (all impls must give the same words).

Run from the recipe directory (paths in ``wav.scp`` and ``text`` are relative to it):

    cd egs2/synth_en/asr1 && python ../../../benchmarks/decode_rtf.py \\
        --model dense=exp/asr_train_asr_conformer_raw_char --model omni=exp/asr_..._omni... \\
        --lm exp/lm_train_lm_char --data dump/raw/test_seen --out ../../../benchmarks/results/decode_rtf.json
"""
import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _bench  # noqa: E402
from _report import decode_rtf_table, write_json  # noqa: E402
from roe import read_kaldi  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def parse_model(text):
    """``"omni=exp/asr_x"`` -> ("omni", "exp/asr_x")."""
    key, sep, path = text.partition("=")
    if not sep or not key or not path:
        raise argparse.ArgumentTypeError(f"--model: expected NAME=EXP_DIR, got {text!r}")
    return key, path


def speech2text(exp_dir, checkpoint, lm_dir, lm_checkpoint, decode_config, threads):
    """ESPnet's Speech2Text for a trained experiment (and LM) dir with the decode YAML."""
    import yaml
    from espnet2.bin.asr_inference import Speech2Text

    import espnet_omnirouter  # noqa: F401  (registers our encoders and model)

    with open(decode_config) as f:
        options = yaml.safe_load(f) or {}
    if lm_dir is None:
        options.pop("lm_weight", None)
    else:
        options.update(lm_train_config=os.path.join(lm_dir, "config.yaml"), lm_file=os.path.join(lm_dir, lm_checkpoint))
    for name in [os.path.join(exp_dir, "config.yaml"), os.path.join(exp_dir, checkpoint)] + (
        [options["lm_train_config"], options["lm_file"]] if lm_dir else []
    ):
        if not os.path.isfile(name):
            raise SystemExit(f"{name} not found")
    torch.set_num_threads(threads)
    return Speech2Text(
        asr_train_config=os.path.join(exp_dir, "config.yaml"),
        asr_model_file=os.path.join(exp_dir, checkpoint),
        device="cpu",
        **options,
    )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=parse_model, action="append", required=True, help="NAME=EXP_DIR (repeat)")
    parser.add_argument("--checkpoint", default="valid.acc.ave.pth")
    parser.add_argument("--lm", default=None, help="LM experiment dir (shallow fusion with the YAML's lm_weight)")
    parser.add_argument("--lm-checkpoint", default="valid.loss.ave.pth")
    parser.add_argument("--decode-config", default=os.path.join(ROOT, "conf/decode_asr.yaml"))
    parser.add_argument("--data", required=True, help="data dir with wav.scp and text")
    parser.add_argument("--max-utts", type=int, default=60)
    parser.add_argument("--impls", default="loop", help="comma-separated Experts.impl values also decoded ('' = none)")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)

    import jiwer
    import soundfile

    for name in ("wav.scp", "text"):
        if not os.path.isfile(os.path.join(args.data, name)):
            raise SystemExit(f"--data {args.data}: {name} not found")
    wavs, texts = read_kaldi(os.path.join(args.data, "wav.scp")), read_kaldi(os.path.join(args.data, "text"))
    utts = [u for u in wavs if u in texts][: args.max_utts]
    if not utts:
        raise SystemExit(f"{args.data}: no utterance in both wav.scp and text")
    audio = {u: soundfile.read(wavs[u], dtype="float32")[0] for u in utts}
    info = _bench.machine_info(torch.device("cpu"))
    models = {
        name: speech2text(path, args.checkpoint, args.lm, args.lm_checkpoint, args.decode_config, args.threads)
        for name, path in args.model
    }
    runs = {name: (name, None) for name in models}
    for impl in [i for i in args.impls.split(",") if i]:
        runs.update({f"{n}_{impl}": (n, impl) for n, s in models.items() if hasattr(s.asr_model.encoder, "moe_ffns")})
    print(
        f"# decode_rtf: {info['device_name']} | threads {torch.get_num_threads()} | {len(utts)} utterances "
        f"| {', '.join(runs)}"
    )
    seconds = {r: 0.0 for r in runs}
    hyps = {r: {} for r in runs}
    load = _bench.cpu_pressure()
    for u in utts:
        for run, (name, impl) in runs.items():
            s2t = models[name]
            for ffn in getattr(s2t.asr_model.encoder, "moe_ffns", list)():
                ffn.experts.impl = impl or "auto"
            t0 = time.perf_counter()
            text = s2t(torch.from_numpy(audio[u]))[0][0]
            seconds[run] += time.perf_counter() - t0
            hyps[run][u] = text
    audio_s = sum(len(a) for a in audio.values()) / 16000
    words = sum(len(texts[u].split()) for u in utts)
    refs = [" ".join(texts[u].split()) for u in utts]
    results = {}
    for run in runs:
        wer = jiwer.process_words(refs, [" ".join(hyps[run][u].split()) for u in utts])
        errors = wer.substitutions + wer.deletions + wer.insertions
        results[run] = dict(decode_s=seconds[run], rtf=seconds[run] / audio_s, wer=100.0 * errors / words,
                            same_words_as=[r for r in runs if r != run and hyps[r] == hyps[run]])
    print(decode_rtf_table(results))
    if args.out:
        write_json(args.out, dict(
            benchmark="decode_rtf", machine=info, machine_load=dict(before=load, after=_bench.cpu_pressure()),
            config=dict(vars(args), model=dict(args.model), utterances=len(utts), audio_s=audio_s, words=words),
            results=results,
        ))
    return results


if __name__ == "__main__":
    main()
