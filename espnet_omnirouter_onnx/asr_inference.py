"""Decode a Kaldi-style ``wav.scp`` with an exported model (onnxruntime; no PyTorch, no ESPnet).

    python -m espnet_omnirouter_onnx.asr_inference --model_dir exp/asr_omni/onnx \\
        --data_path_and_name_and_type dump/raw/test_clean/wav.scp,speech,sound \\
        --output_dir exp/asr_omni/decode_onnx/test_clean [--config conf/decode_asr.yaml] [--beam_size 5]

Options and output are ESPnet's ``espnet2.bin.asr_inference``'s: ``--config`` takes the same
decode YAML (``beam_size``, ``ctc_weight``, ``penalty``, ``maxlenratio``, ``minlenratio``,
``nbest``; ``lm_weight``/``ngram_weight`` apply only with a language model, as in ESPnet, and
there is none here), and ``<output_dir>/<n>best_recog/`` gets ``text``, ``token``,
``token_int`` and ``score``, so the recipe's scoring reads it.  ``<output_dir>/rtf.json`` gives
the real-time factor (decoding time / audio duration, files read outside the timing).
"""
import argparse
import json
import os
import sys
import time
from typing import Dict, List, Optional

import soundfile
import yaml

from espnet_omnirouter_onnx.speech2text import Speech2Text

DECODE_KEYS = ("beam_size", "ctc_weight", "penalty", "maxlenratio", "minlenratio", "nbest")
LM_ONLY_KEYS = ("lm_weight", "ngram_weight")  # weights of models this runtime does not have


def read_decode_config(path: str) -> Dict[str, float]:
    """The decode options of ESPnet's decode YAML ``path``; another key is an error naming it."""
    with open(path, encoding="utf-8") as f:
        config = yaml.safe_load(f) or {}
    if not isinstance(config, dict):
        raise ValueError(f"{path}: expected a mapping of decoding options, got {type(config).__name__}")
    unknown = sorted(set(config) - set(DECODE_KEYS) - set(LM_ONLY_KEYS))
    if unknown:
        raise ValueError(f"{path}: {', '.join(unknown)}: not options of the ONNX runtime (it takes "
                         f"{', '.join(DECODE_KEYS)})")
    return {k: config[k] for k in DECODE_KEYS if k in config}


def read_wav_scp(path: str) -> List[tuple]:
    """``[(utt, audio file)]`` of a ``wav.scp`` (audio files only: no pipes, no ark offsets)."""
    entries = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            parts = line.strip().split(maxsplit=1)
            if not parts:
                continue
            if len(parts) != 2 or parts[1].endswith("|") or ".ark:" in parts[1]:
                raise ValueError(f"{path}:{n}: expected '<utt> <audio file>', got {line.strip()!r}")
            entries.append((parts[0], parts[1]))
    return entries


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m espnet_omnirouter_onnx.asr_inference",
                                     description="Decode speech with an ONNX export of an ASR model.")
    parser.add_argument("--model_dir", required=True, help="directory written by espnet_omnirouter.bin.export_onnx")
    parser.add_argument("--data_path_and_name_and_type", required=True,
                        help="<wav.scp>,speech,sound (as ESPnet's asr_inference)")
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--config", default=None, help="decode YAML (ESPnet's keys)")
    for key, kind in (("beam_size", int), ("ctc_weight", float), ("penalty", float), ("maxlenratio", float),
                      ("minlenratio", float), ("nbest", int)):
        parser.add_argument(f"--{key}", type=kind, default=None, help="overrides the decode YAML")
    parser.add_argument("--threads", type=int, default=None, help="onnxruntime intra-op threads")
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = get_parser().parse_args(argv)
    try:
        scp, name, kind = args.data_path_and_name_and_type.split(",")
        if (name, kind) != ("speech", "sound"):
            raise ValueError(f"--data_path_and_name_and_type: expected <wav.scp>,speech,sound, got "
                             f"{args.data_path_and_name_and_type}")
        options = read_decode_config(args.config) if args.config else {}
        options.update({k: getattr(args, k) for k in DECODE_KEYS if getattr(args, k) is not None})
        speech2text = Speech2Text(args.model_dir, threads=args.threads, **options)
        entries = read_wav_scp(scp)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    nbest = int(options.get("nbest", 1))
    outs = {(n, f): [] for n in range(1, nbest + 1) for f in ("text", "token", "token_int", "score")}
    decode_s = audio_s = 0.0
    for utt, path in entries:
        speech, fs = soundfile.read(path, dtype="float32")
        if fs != speech2text.fs or speech.ndim != 1:
            print(f"error: {path}: expected mono audio at {speech2text.fs} Hz, got {fs} Hz, shape {speech.shape}",
                  file=sys.stderr)
            return 2
        t0 = time.perf_counter()
        results = speech2text(speech)
        decode_s += time.perf_counter() - t0
        audio_s += len(speech) / fs
        for n, (text, tokens, token_ids, hyp) in enumerate(results, 1):
            outs[n, "text"].append(f"{utt} {text}")
            outs[n, "token"].append(f"{utt} {' '.join(tokens)}")
            outs[n, "token_int"].append(f"{utt} {' '.join(map(str, token_ids))}")
            outs[n, "score"].append(f"{utt} {hyp.score}")
    for (n, field), lines in outs.items():
        d = os.path.join(args.output_dir, f"{n}best_recog")
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, field), "w", encoding="utf-8") as f:
            f.write("".join(line + "\n" for line in lines))
    rtf = {"utterances": len(entries), "audio_s": audio_s, "decode_s": decode_s,
           "rtf": decode_s / audio_s if audio_s else None, "options": options}
    with open(os.path.join(args.output_dir, "rtf.json"), "w") as f:
        json.dump(rtf, f, indent=1)
    print(f"decoded {len(entries)} utterances, RTF {rtf['rtf']:.3f}" if audio_s else "decoded 0 utterances")
    return 0


if __name__ == "__main__":
    sys.exit(main())
