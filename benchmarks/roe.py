#!/usr/bin/env python3
"""RoE benchmark: does hyper-parallel inference help MoE encoders out of domain, and at what cost?

For each model (``--models name=path``; path = experiment dir, packed zip or unpacked pack):
  1. on the dev set, tune the Gumbel temperature tau of the noisy (middle) MoE FFNs on a grid with
     K = ``--tune_k`` noisy copies and keep the tau with the lowest dev WER (ties: the smaller tau);
  2. decode every test set with K in ``--k_values`` (K = 1 is plain decoding, RoE off) and that tau,
     measuring WER, CER and the real-time factor (decoding seconds / audio seconds, model loading
     and audio reading excluded; one untimed warm-up decode of a dev utterance per model and K).
Writes ``<out>/roe.md`` and ``<out>/roe.json``: a table per model, the chosen tau, and one sentence
per model, generated from the numbers, on whether RoE helped on the out-of-domain sets and at what
RTF cost.  Decoding is greedy CTC (``RoESpeech2Text.greedy``: best path over the RoE-averaged CTC
posteriors; fast on a CPU) unless ``--decode beam`` (joint CTC/attention beam search, where RoE
changes the CTC scores only).

    benchmarks/roe.py --models switch=exp/seed1/asr_switch omni=exp/seed1/asr_omni --dump dump/raw \\
        [--max_utts 100] [--taus 0.05 0.1 0.25 0.5 1] [--k_values 1 2 4 8] [--out benchmarks/results]

WER/CER: summed edit distance / summed reference words (characters, spaces included), in percent,
as stage 7 of the recipe scores them.  The out-of-domain (OOD) average is the unweighted mean over
the OOD sets present.  Relative paths in wav.scp (and in an experiment dir's config.yaml) are
looked up from the parents of the dump (experiment) dir, i.e. the recipe dir, then from the current
directory, so the script runs from anywhere.

(About 500 lines: the study's tuning, decoding, timing, verdict and report in one entry script; the
RoE decoder itself is espnet_omnirouter.inference.roe.)
"""

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _report import write_json_and_report  # noqa: E402

DEFAULT_OOD = ["test_unseen_voice", "test_noisy", "test_tempo", "test_real"]
SET_ORDER = ["test_seen", "test_unseen_voice", "test_noisy", "test_tempo", "test_real"]
LABELS = {"dense": "Dense Conformer", "switch": "Switch Conformer", "omni": "Omni-router Conformer"}


# ----------------------------------------------------------------------------- data
def read_kaldi(path: str) -> Dict[str, str]:
    out = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            parts = line.strip().split(maxsplit=1)
            if parts:
                out[parts[0]] = parts[1] if len(parts) > 1 else ""
    return out


def resolve(path: str, anchor: str) -> str:
    """An absolute ``path`` as is; a relative one from the nearest parent of ``anchor`` that holds it
    (the recipe dir, for the paths a recipe writes), else from the current dir."""
    if os.path.isabs(path):
        return path
    for base in Path(anchor).resolve().parents:
        if (base / path).exists():
            return str(base / path)
    if os.path.exists(path):
        return os.path.abspath(path)
    raise FileNotFoundError(f"{path}: not found from the parents of {anchor} nor from {os.getcwd()}")


def load_set(dump: str, name: str, max_utts: Optional[int] = None) -> List[Dict]:
    """The first ``max_utts`` utterances (sorted by id) of ``dump/name``: id, wav path, reference."""
    d = os.path.join(dump, name)
    wavs, refs = read_kaldi(os.path.join(d, "wav.scp")), read_kaldi(os.path.join(d, "text"))
    keys = sorted(k for k in wavs if k in refs)
    if max_utts:
        keys = keys[:max_utts]
    out = []
    for k in keys:
        w = wavs[k]
        if w.rstrip().endswith("|"):
            raise ValueError(f"{d}/wav.scp: {k} is a pipe; give the formatted dump (dump/raw) instead")
        out.append({"utt": k, "wav": resolve(w, d), "ref": " ".join(refs[k].split())})
    return out


def read_audio(path: str):
    import numpy as np
    import soundfile

    x, rate = soundfile.read(path, dtype="float32", always_2d=False)
    if x.ndim > 1:
        x = x.mean(axis=1)
    return np.ascontiguousarray(x), rate


# ----------------------------------------------------------------------------- scoring
def edit_distance(ref: Sequence, hyp: Sequence) -> int:
    prev = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        cur = [i] + [0] * len(hyp)
        for j, h in enumerate(hyp, 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (r != h))
        prev = cur
    return prev[-1]


def error_rate(refs: Sequence[str], hyps: Sequence[str], unit: str = "word") -> Dict:
    """Summed edit distance over summed reference length, in percent (``word`` or ``char``)."""
    errors = total = 0
    for r, h in zip(refs, hyps):
        r, h = " ".join(r.split()), " ".join(h.split())
        a, b = (r.split(), h.split()) if unit == "word" else (list(r), list(h))
        errors += edit_distance(a, b)
        total += len(a)
    return {"errors": errors, "ref": total, "rate": 100.0 * errors / total if total else None}


def rel_change(value: Optional[float], ref: Optional[float]) -> Optional[float]:
    if value is None or ref is None or ref == 0:
        return None
    return 100.0 * (value - ref) / ref


def mean(values) -> Optional[float]:
    v = [x for x in values if x is not None]
    return sum(v) / len(v) if v else None


# ----------------------------------------------------------------------------- models
def model_files(path: str, cache_dir: str) -> Dict[str, str]:
    """``asr_train_config`` and ``asr_model_file`` of an experiment dir, zip or unpacked pack.

    An experiment dir gives the checkpoint that asr.sh decodes (the first best_model_criterion's
    ``*.ave.pth``, else the hub's order); its config's relative paths (bpemodel, stats file) are
    made absolute in a copy.  A zip is unpacked into ``cache_dir`` (fresh per run, so a re-packed
    zip at the same path is never read from a stale cache).
    """
    import yaml

    from espnet_omnirouter import hub

    p = Path(path)
    if p.is_dir() and (p / "config.yaml").is_file() and not (p / "meta.yaml").exists():
        with open(p / "config.yaml", encoding="utf-8") as f:
            conf = yaml.safe_load(f)
        ckpt = None
        for crit in conf.get("best_model_criterion") or []:
            cand = p / f"{crit[0]}.{crit[1]}.ave.pth"
            if cand.exists():
                ckpt = str(cand)
            break
        ckpt = ckpt or hub._best_checkpoint(p)
        anchor = str(p / "config.yaml")
        if isinstance(conf.get("bpemodel"), str):
            conf["bpemodel"] = os.path.abspath(resolve(conf["bpemodel"], anchor))
        stats = (conf.get("normalize_conf") or {}).get("stats_file")
        if isinstance(stats, str):
            conf["normalize_conf"]["stats_file"] = os.path.abspath(resolve(stats, anchor))
        fixed = Path(tempfile.mkdtemp(dir=cache_dir)) / "config.yaml"
        with open(fixed, "w", encoding="utf-8") as f:
            yaml.safe_dump(conf, f)
        return {"asr_train_config": str(fixed), "asr_model_file": ckpt, "source": str(p)}
    files = hub.resolve_model_files(path, cache_dir)
    return {"asr_train_config": files["asr_train_config"], "asr_model_file": files["asr_model_file"],
            "source": str(p)}


def build(files: Dict[str, str], k: int, tau: float, args):
    from espnet_omnirouter.inference.speech2text import RoESpeech2Text

    kwargs = dict(device=args.device, beam_size=1, ctc_weight=0.3, nbest=1)
    if args.decode == "beam":
        kwargs.update(beam_size=args.beam_size, ctc_weight=args.ctc_weight, maxlenratio=args.maxlenratio,
                      minlenratio=args.minlenratio, penalty=args.penalty, lm_weight=0.0)
    return RoESpeech2Text(
        asr_train_config=files["asr_train_config"], asr_model_file=files["asr_model_file"],
        roe_samples=k, roe_tau=tau, roe_clean_layers=args.clean_layers, roe_aggregate=args.aggregate,
        roe_shared_noise=args.shared_noise, roe_seed=args.roe_seed, **kwargs,
    )


def transcribe(s2t, speech, decode: str) -> str:
    if decode == "greedy":
        return s2t.greedy(speech)
    results = s2t(speech)
    return results[0][0] if results else ""


def decode_set(s2t, utts: List[Dict], decode: str, audio_cache: Dict) -> Dict:
    """Hypotheses, WER/CER and RTF of one set (``audio_cache``: path -> (samples, rate))."""
    def audio(u):
        if u["wav"] not in audio_cache:
            audio_cache[u["wav"]] = read_audio(u["wav"])
        return audio_cache[u["wav"]]

    hyps, seconds, samples, flips = [], 0.0, 0.0, []
    for u in utts:
        x, rate = audio(u)
        t0 = time.perf_counter()
        hyps.append(transcribe(s2t, x, decode))
        seconds += time.perf_counter() - t0
        samples += len(x) / rate
        if s2t.flip_rates:
            flips.append(mean(s2t.flip_rates.values()))
    refs = [u["ref"] for u in utts]
    w, c = error_rate(refs, hyps, "word"), error_rate(refs, hyps, "char")
    return {
        "utterances": len(utts),
        "wer": w["rate"], "wer_errors": w["errors"], "wer_ref": w["ref"],
        "cer": c["rate"], "cer_errors": c["errors"], "cer_ref": c["ref"],
        "audio_seconds": samples, "decode_seconds": seconds,
        "rtf": seconds / samples if samples else None,
        "flip_rate": mean(flips),
        "hyps": dict(zip([u["utt"] for u in utts], hyps)),
    }


def _drop_hyps(d: Dict) -> Dict:
    return {k: v for k, v in d.items() if k != "hyps"}


def run_model(name: str, path: str, data: Dict[str, List[Dict]], args, cache_dir: str, audio_cache: Dict) -> Dict:
    from espnet_omnirouter.hub import check_checkpoint

    files = model_files(path, cache_dir)
    log = lambda msg: print(f"[{name}] {msg}", flush=True)  # noqa: E731
    checked = False

    def get(k, tau):
        nonlocal checked
        s2t = build(files, k, tau, args)
        if not checked:
            check_checkpoint(s2t.asr_model, files["asr_model_file"])
            checked = True
        # one untimed warm-up decode (first-call allocations are not part of the RTF)
        decode_set(s2t, data[args.dev_set][:1], args.decode, audio_cache)
        return s2t

    tuning = []
    for tau in args.taus:
        r = decode_set(get(args.tune_k, tau), data[args.dev_set], args.decode, audio_cache)
        tuning.append({"tau": tau, "k": args.tune_k, **_drop_hyps(r)})
        log(f"dev K={args.tune_k} tau={tau}: WER {r['wer']:.2f}% (flip rate {r['flip_rate'] or 0:.3f})")
    best = min(tuning, key=lambda t: (math.inf if t["wer"] is None else t["wer"], t["cer"] or 0, t["tau"]))
    tau = best["tau"]
    dev_plain = _drop_hyps(decode_set(get(1, tau), data[args.dev_set], args.decode, audio_cache))
    log(f"chosen tau {tau} (dev WER {best['wer']:.2f}% vs {dev_plain['wer']:.2f}% at K=1)")

    results, hyps = {}, {}
    for k in args.k_values:
        s2t = get(k, tau)
        per_set = {}
        for s in args.test_sets:
            r = decode_set(s2t, data[s], args.decode, audio_cache)
            hyps.setdefault(str(k), {})[s] = r["hyps"]
            per_set[s] = _drop_hyps(r)
        ood = [s for s in args.ood_sets if s in per_set]
        sec = sum(r["decode_seconds"] for r in per_set.values())
        aud = sum(r["audio_seconds"] for r in per_set.values())
        results[str(k)] = {
            "sets": per_set,
            "ood_avg_wer": mean(per_set[s]["wer"] for s in ood) if ood else None,
            "ood_avg_cer": mean(per_set[s]["cer"] for s in ood) if ood else None,
            "rtf": sec / aud if aud else None,
            "decode_seconds": sec,
            "audio_seconds": aud,
            "flip_rate": mean(r["flip_rate"] for r in per_set.values()),
        }
        log(f"K={k}: OOD avg WER {_pct(results[str(k)]['ood_avg_wer'])}, RTF {results[str(k)]['rtf']:.4f}")
    out = {"path": path, "files": files, "tuning": tuning, "tau": tau, "dev_k1": dev_plain, "results": results}
    out["sentence"] = sentence(name, out, args.k_values, args.ood_sets)
    if args.save_hyps:
        out["hyps"] = hyps
    return out


# ----------------------------------------------------------------------------- report
def _pct(x: Optional[float], digits: int = 2) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}%"


def sentence(name: str, res: Dict, k_values: Sequence[int], ood_sets: Sequence[str]) -> str:
    """Did RoE help on the OOD sets (best K > 1 against K = 1) and at what RTF cost.

    The best K is picked on the test sets themselves, so a small gain is expected by chance: a change
    of at most 2 * sqrt(word errors at K = 1) pooled OOD word errors is called noise (a Poisson scale).
    """
    label = LABELS.get(name, name)
    r = res["results"]
    if "1" not in r:
        return f"{label}: no K = 1 run to compare with."
    base = r["1"]
    cands = [(r[str(k)]["ood_avg_wer"], k) for k in k_values if k > 1 and r[str(k)]["ood_avg_wer"] is not None]
    if base["ood_avg_wer"] is None or not cands:
        return f"{label}: no out-of-domain WER with K > 1 to compare with."
    wer, k = min(cands)
    other = r[str(k)]
    rel = rel_change(wer, base["ood_avg_wer"])
    cost = (f"{other['rtf'] / base['rtf']:.1f}x the real-time factor of K = 1 "
            f"(RTF {other['rtf']:.4f} vs {base['rtf']:.4f})") if base["rtf"] else "n/a RTF"
    where = f"K = {k}, tau {res['tau']:g}"
    ood = [s for s in ood_sets if s in base["sets"] and s in other["sets"]]
    errs_base = sum(base["sets"][s]["wer_errors"] for s in ood)
    errs = sum(other["sets"][s]["wer_errors"] for s in ood)
    words = sum(base["sets"][s]["wer_ref"] for s in ood)
    noise = 2 * math.sqrt(errs_base)
    counts = (f"{errs} vs {errs_base} word errors in {words} OOD reference words; noise scale "
              f"2 sqrt({errs_base}) = {noise:.0f}")
    seen = ""
    if "test_seen" in base["sets"] and "test_seen" in other["sets"]:
        seen = (f" In domain (test_seen) WER {_pct(other['sets']['test_seen']['wer'])} vs "
                f"{_pct(base['sets']['test_seen']['wer'])}.")
    if rel is not None and rel < 0 and errs_base - errs > noise:
        return (f"{label}: RoE helped on the out-of-domain sets: with {where} the average OOD WER is "
                f"{_pct(wer)} against {_pct(base['ood_avg_wer'])} without RoE (K = 1), {rel:+.1f}% relative "
                f"({counts}), at {cost}.{seen}")
    if rel is not None and rel < 0:
        return (f"{label}: RoE did not clearly help on the out-of-domain sets: the best K > 1 ({where}, picked "
                f"on these test sets) gives an average OOD WER of {_pct(wer)} against {_pct(base['ood_avg_wer'])} "
                f"without RoE (K = 1), {rel:+.1f}% relative, within noise ({counts}), at {cost}.{seen}")
    if rel == 0 or (rel is None and wer == base["ood_avg_wer"]):
        return (f"{label}: RoE made no difference on the out-of-domain sets: the best K > 1 ({where}) gives "
                f"the same average OOD WER as K = 1 ({_pct(wer)}), at {cost}.{seen}")
    return (f"{label}: RoE did not help on the out-of-domain sets: the best K > 1 ({where}) gives an average "
            f"OOD WER of {_pct(wer)} against {_pct(base['ood_avg_wer'])} without RoE (K = 1), "
            f"{'n/a' if rel is None else f'{rel:+.1f}%'} relative ({counts}), at {cost}.{seen}")


def _table(header, rows) -> List[str]:
    return (["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
            + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows] + [""])


def markdown(result: Dict) -> str:
    a = result["settings"]
    out = ["# RoE (Roster of Experts) inference: K noisy routings averaged", "",
           "Generated by `benchmarks/roe.py` from its own decoding runs (nothing typed by hand).", ""]
    if result.get("command"):
        out += [f"Command: `{result['command']}`.", ""]
    out += [
        f"- decoding: {a['decode']}"
        + (" CTC (best path over the RoE-averaged CTC posteriors)" if a["decode"] == "greedy" else
           f" search (beam {a['beam_size']}, CTC weight {a['ctc_weight']}; RoE averages the CTC scores)"),
        f"- data: `{a['dump']}`; tuning on `{a['dev_set']}`; "
        + ("all utterances" if not a["max_utts"] else f"at most {a['max_utts']} utterances per set (first by id)"),
        f"- noisy MoE FFNs: all but the first and last {a['clean_layers']}; aggregate `{a['aggregate']}`; "
        f"shared noise {a['shared_noise']}; noise seed {a['roe_seed']}",
        f"- tau grid {', '.join(f'{t:g}' for t in a['taus'])} at K = {a['tune_k']} (lowest dev WER wins); "
        f"K values {', '.join(str(k) for k in a['k_values'])} (K = 1: RoE off)",
        f"- RTF = decoding seconds / audio seconds on `{a['device']}` with {a['threads']} torch thread(s), "
        "model loading and audio reading excluded",
        f"- out-of-domain (OOD) sets: {', '.join(result['ood_sets']) or 'none'}; OOD avg = unweighted mean of "
        "their WERs",
        "",
        "## Verdict", "",
    ]
    out += [f"- {m['sentence']}" for m in result["models"].values()] + [""]
    for name, m in result["models"].items():
        out += [f"## {LABELS.get(name, name)} (`{m['path']}`)", "",
                f"Chosen tau: **{m['tau']:g}** (dev WER {_pct(min(t['wer'] for t in m['tuning']))} at "
                f"K = {a['tune_k']}; {_pct(m['dev_k1']['wer'])} at K = 1).", ""]
        out += _table(["tau", f"dev WER (K = {a['tune_k']})", "dev CER", "expert flip rate"],
                      [[f"{t['tau']:g}", _pct(t["wer"]), _pct(t["cer"]), _num(t["flip_rate"], 3)]
                       for t in m["tuning"]])
        sets = result["test_sets"]
        rows = []
        base = m["results"].get("1")
        for k in a["k_values"]:
            r = m["results"][str(k)]
            ratio = f"{r['rtf'] / base['rtf']:.2f}x" if base and base["rtf"] and r["rtf"] else "n/a"
            rows.append([str(k)] + [_pct(r["sets"][s]["wer"]) for s in sets]
                        + [_pct(r["ood_avg_wer"]), _num(r["rtf"], 4), ratio, _num(r["flip_rate"], 3)])
        out += ["WER per test set:", ""]
        out += _table(["K"] + sets + ["OOD avg", "RTF", "RTF vs K = 1", "flip rate"], rows)
        out += ["CER per test set:", ""]
        out += _table(["K"] + sets + ["OOD avg"],
                      [[str(k)] + [_pct(m["results"][str(k)]["sets"][s]["cer"]) for s in sets]
                       + [_pct(m["results"][str(k)]["ood_avg_cer"])] for k in a["k_values"]])
    out += ["Flip rate: fraction of frames of the noisy MoE FFNs whose expert the noise changed "
            "(mean over FFNs and utterances).", ""]
    return "\n".join(out) + "\n"


def _num(x, digits):
    return "n/a" if x is None else f"{x:.{digits}f}"


# ----------------------------------------------------------------------------- main
def parse_models(items: Sequence[str]) -> Dict[str, str]:
    out = {}
    for it in items:
        if "=" in it:
            name, path = it.split("=", 1)
        else:
            path = it
            name = os.path.basename(os.path.normpath(it))
            name = name[4:] if name.startswith("asr_") else name
        if name in out:
            raise SystemExit(f"--models: name {name!r} given twice")
        out[name] = path
    return out


def _bool(s: str) -> bool:
    if s.lower() in ("true", "1", "yes"):
        return True
    if s.lower() in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {s!r}")


def write_report(result: Dict, out: str) -> None:
    write_json_and_report(os.path.join(out, "roe.json"), result, markdown(result))
    for m in result["models"].values():
        print(m["sentence"])


def rewrite_report(path: str, out: str) -> int:
    """The report of an earlier run (its roe.json) with the verdicts written again."""
    with open(path, encoding="utf-8") as f:
        result = json.load(f)
    k_values = result["settings"]["k_values"]
    for name, res in result["models"].items():
        res["sentence"] = sentence(name, res, k_values, result["ood_sets"])
    write_report(result, out)
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", help="name=path (experiment dir, zip or pack); required")
    p.add_argument("--dump", help="formatted data dir of the recipe (dump/raw); required")
    p.add_argument("--report_from", default=None,
                   help="rewrite roe.md (and the verdicts in roe.json) in --out from this roe.json; no decoding")
    p.add_argument("--dev_set", default="dev")
    p.add_argument("--test_sets", nargs="+", default=None, help="default: the test* dirs of --dump")
    p.add_argument("--ood_sets", nargs="*", default=DEFAULT_OOD)
    p.add_argument("--max_utts", type=int, default=None, help="utterances per set (first by id); default all")
    # Small taus matter: the routers of short trainings are soft (synth_en, 9 epochs: chosen-expert
    # probability ~0.3-0.4 of 8), so tau 0.25 already flips ~28% of a Switch model's choices.
    p.add_argument("--taus", nargs="+", type=float, default=[0.05, 0.1, 0.25, 0.5, 1.0])
    p.add_argument("--tune_k", type=int, default=4)
    p.add_argument("--k_values", nargs="+", type=int, default=[1, 2, 4, 8])
    p.add_argument("--clean_layers", type=int, default=1)
    p.add_argument("--aggregate", choices=["prob", "logprob"], default="prob")
    p.add_argument("--shared_noise", type=_bool, default=False)
    p.add_argument("--roe_seed", type=int, default=0)
    p.add_argument("--decode", choices=["greedy", "beam"], default="greedy")
    p.add_argument("--beam_size", type=int, default=10)
    p.add_argument("--ctc_weight", type=float, default=0.3)
    p.add_argument("--maxlenratio", type=float, default=0.0)
    p.add_argument("--minlenratio", type=float, default=0.0)
    p.add_argument("--penalty", type=float, default=0.0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--save_hyps", type=_bool, default=False, help="also store the hypotheses in roe.json")
    p.add_argument("--command", default=None, help="command line to quote in the report")
    p.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    args = p.parse_args(argv)
    if args.report_from:
        return rewrite_report(args.report_from, args.out)
    for name in ("models", "dump"):
        if not getattr(args, name):
            p.error(f"--{name} is required (unless --report_from)")

    import torch

    import espnet_omnirouter  # noqa: F401

    if args.threads:
        torch.set_num_threads(args.threads)
    if 1 not in args.k_values:
        args.k_values = [1] + list(args.k_values)  # the reference
    args.k_values = sorted(set(args.k_values))
    if any(k < 1 for k in args.k_values) or args.tune_k < 2:
        p.error("K values must be >= 1 and --tune_k >= 2")
    if args.decode == "beam" and args.ctc_weight <= 0:
        p.error("RoE averages CTC posteriors: --ctc_weight must be > 0")
    models = parse_models(args.models)
    if args.test_sets is None:
        found = [d for d in os.listdir(args.dump)
                 if d.startswith("test") and os.path.isfile(os.path.join(args.dump, d, "wav.scp"))]
        args.test_sets = [s for s in SET_ORDER if s in found] + sorted(set(found) - set(SET_ORDER))
    if not args.test_sets:
        p.error(f"no test set in {args.dump}")
    args.ood_sets = [s for s in args.ood_sets if s in args.test_sets]

    data = {s: load_set(args.dump, s, args.max_utts) for s in [args.dev_set] + list(args.test_sets)}
    for s, utts in data.items():
        if not utts:
            p.error(f"{args.dump}/{s}: no utterance")
    settings = {k: getattr(args, k) for k in (
        "dump", "dev_set", "max_utts", "taus", "tune_k", "k_values", "clean_layers", "aggregate", "shared_noise",
        "roe_seed", "decode", "beam_size", "ctc_weight", "maxlenratio", "device")}
    settings["threads"] = torch.get_num_threads()
    result = {"settings": settings, "test_sets": list(args.test_sets), "ood_sets": args.ood_sets,
              "utterances": {s: len(u) for s, u in data.items()}, "command": args.command, "models": {}}
    audio_cache: Dict = {}
    with tempfile.TemporaryDirectory(prefix="roe_models_") as cache:
        for name, path in models.items():
            result["models"][name] = run_model(name, path, data, args, cache, audio_cache)
            files = result["models"][name]["files"]  # temporary paths are gone afterwards
            ckpt = files["asr_model_file"]
            files["asr_model_file"] = os.path.basename(ckpt) if ckpt.startswith(cache) else ckpt
            del files["asr_train_config"]
    write_report(result, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
