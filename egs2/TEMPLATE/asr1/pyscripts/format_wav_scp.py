#!/usr/bin/env python3
"""Stage 2 of asr.sh: check a Kaldi-style data dir and dump it as 16-bit mono wavs at one rate.

Reads ``<src>/{wav.scp,text[,utt2spk]}`` and writes ``<dst>/{wav.scp,text,utt2spk,spk2utt,
utt2num_samples,feats_type,dropped.txt}`` with the audio under ``<dst>/data/``.

``wav.scp`` values are a file path (anything libsndfile reads) or a shell command ending in ``|``
that writes a sound file to stdout.  Multi-channel audio is averaged to mono, then resampled with
``scipy.signal.resample_poly``.

An utterance is dropped, with one ``WARNING`` line naming it and the reason, when
  * it has no transcript line or an empty transcript (``no_transcript``, ``empty_transcript``),
  * its audio file does not exist (``missing_audio``),
  * its audio cannot be decoded or holds non-finite samples (``unreadable_audio``),
  * its audio holds fewer frames than its header declares: a file cut short, e.g. by an
    interrupted copy (``truncated_audio``; see audio_length.py),
  * its audio has no samples (``empty_audio``),
  * it is shorter than --min_dur or longer than --max_dur seconds (``too_short``, ``too_long``);
    these two limits are only applied when given (asr.sh gives them for train/valid sets only).
A summary line (kept N, dropped by reason) ends the run; the exit status is 1 only when nothing is
kept or the input is unusable.
"""

import argparse
import collections
import io
import math
import os
import shutil
import subprocess
import sys
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import soundfile as sf
from scipy.signal import resample_poly

from audio_length import declared_frames, declared_wav_frames

REASONS = (
    "no_transcript",
    "empty_transcript",
    "missing_audio",
    "unreadable_audio",
    "truncated_audio",
    "empty_audio",
    "too_short",
    "too_long",
)


def parse_fs(value: str) -> int:
    v = value.strip().lower()
    if v.endswith("k"):
        return int(float(v[:-1]) * 1000)
    return int(float(v))


def read_kv(path, allow_empty_value=False):
    """Kaldi 'key value...' file -> list of (key, value) in file order."""
    items = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            line = line.rstrip("\n").rstrip("\r")
            if not line.strip():
                continue
            parts = line.strip().split(maxsplit=1)
            key = parts[0]
            value = parts[1].strip() if len(parts) > 1 else ""
            if not value and not allow_empty_value:
                raise ValueError(f"{path}:{lineno}: no value for key '{key}'")
            items.append((key, value))
    return items


def load_audio(src):
    """-> (samples [n, ch] float32, rate) or raises (reason, detail)."""
    if src.endswith("|"):
        cmd = src[:-1].strip()
        proc = subprocess.run(cmd, shell=True, capture_output=True)
        if proc.returncode != 0:
            err = proc.stderr.decode(errors="replace").strip().splitlines()
            raise AudioError(
                "unreadable_audio",
                f"command '{cmd}' exited with {proc.returncode}"
                + (f": {err[-1]}" if err else ""),
            )
        return read_whole(io.BytesIO(proc.stdout), f"output of '{cmd}'")
    if not os.path.exists(src):
        raise AudioError("missing_audio", f"audio file not found: {src}")
    with open(src, "rb") as f:
        return read_whole(f, src)


def read_whole(f, name, block=4096):
    """Decode the sound file ``f`` -> (samples [n, ch] float32, rate); ``truncated_audio`` when
    fewer frames can be read than its header declares (a file cut short: libsndfile returns
    the part that is there, or fails part-way, as FLAC does), ``unreadable_audio`` otherwise."""
    wav_frames = declared_wav_frames(f)
    try:
        sound = sf.SoundFile(f)
    except Exception as e:  # libsndfile raises various types
        raise AudioError("unreadable_audio", f"cannot decode {name}: {type(e).__name__}: {e}")
    with sound:
        declared = declared_frames(wav_frames, sound.frames)
        parts, error = [], None
        try:
            while True:
                part = sound.read(block, dtype="float32", always_2d=True)
                parts.append(part)
                if len(part) < block:
                    break
        except Exception as e:
            error = f"{type(e).__name__}: {e}"
        data = np.concatenate(parts) if parts else np.zeros((0, sound.channels), np.float32)
        rate = sound.samplerate
    if declared is not None and len(data) < declared:
        raise AudioError(
            "truncated_audio",
            f"{name}: the header declares {declared} frames ({declared / rate:.3f} s), "
            f"only {len(data)} ({len(data) / rate:.3f} s) could be read"
            + (f" ({error})" if error else "; the file was cut short"),
        )
    if error:
        raise AudioError("unreadable_audio", f"cannot decode {name}: {error}")
    return data, rate


class AudioError(Exception):
    def __init__(self, reason, detail):
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def process_one(job):
    """Worker: (uttid, src, out_path, fs, min_dur, max_dur) -> (uttid, reason|None, detail|nsamp)."""
    uttid, src, out_path, fs, min_dur, max_dur = job
    try:
        data, rate = load_audio(src)
    except AudioError as e:
        return uttid, e.reason, e.detail
    if data.shape[0] == 0 or data.shape[1] == 0:
        return uttid, "empty_audio", f"audio has no samples: {src}"
    if not np.all(np.isfinite(data)):
        return uttid, "unreadable_audio", f"audio holds NaN/inf samples: {src}"
    x = data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]
    if rate != fs:
        g = math.gcd(int(rate), int(fs))
        x = resample_poly(x, fs // g, int(rate) // g).astype(np.float32)
    dur = len(x) / fs
    if min_dur is not None and dur < min_dur:
        return uttid, "too_short", f"{dur:.3f} s < --min_dur {min_dur} s"
    if max_dur is not None and dur > max_dur:
        return uttid, "too_long", f"{dur:.3f} s > --max_dur {max_dur} s"
    np.clip(x, -1.0, 1.0, out=x)
    sf.write(out_path, x, fs, subtype="PCM_16", format="WAV")
    return uttid, None, len(x)


def safe_name(uttid):
    return uttid.replace("/", "_").replace(os.sep, "_")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--src", required=True, help="input data dir (wav.scp, text, utt2spk)")
    p.add_argument("--dst", required=True, help="output dir (dump/raw/<set>)")
    p.add_argument("--fs", default="16k", help="output sampling rate, e.g. 16k or 16000")
    p.add_argument("--min_dur", type=float, default=None, help="drop shorter utterances (s)")
    p.add_argument("--max_dur", type=float, default=None, help="drop longer utterances (s)")
    p.add_argument("--nj", type=int, default=1, help="parallel worker processes")
    p.add_argument("--name", default=None, help="set name used in messages")
    args = p.parse_args(argv)

    fs = parse_fs(args.fs)
    name = args.name or os.path.basename(os.path.normpath(args.src))
    tag = f"[{name}]"
    for f in ("wav.scp", "text"):
        if not os.path.isfile(os.path.join(args.src, f)):
            print(f"ERROR: {tag} {os.path.join(args.src, f)} does not exist", file=sys.stderr)
            return 1

    wavs = read_kv(os.path.join(args.src, "wav.scp"), allow_empty_value=True)
    texts = dict(read_kv(os.path.join(args.src, "text"), allow_empty_value=True))
    utt2spk = {}
    if os.path.isfile(os.path.join(args.src, "utt2spk")):
        utt2spk = dict(read_kv(os.path.join(args.src, "utt2spk"), allow_empty_value=True))

    dropped = []  # (uttid, reason, detail)
    seen = set()
    jobs = []
    # start from a clean output dir so that a re-run never leaves stale files behind
    if os.path.isdir(args.dst):
        shutil.rmtree(args.dst)
    audio_dir = os.path.join(args.dst, "data")
    os.makedirs(audio_dir)

    for uttid, src in wavs:
        if uttid in seen:
            print(f"WARNING: {tag} duplicate wav.scp entry for '{uttid}' ignored (first kept)",
                  file=sys.stderr)
            continue
        seen.add(uttid)
        if uttid not in texts:
            dropped.append((uttid, "no_transcript", "no line in text"))
            continue
        if not " ".join(texts[uttid].split()):
            dropped.append((uttid, "empty_transcript", "transcript is empty"))
            continue
        if not src:
            dropped.append((uttid, "missing_audio", "wav.scp gives no audio path"))
            continue
        out_path = os.path.join(audio_dir, safe_name(uttid) + ".wav")
        jobs.append((uttid, src, out_path, fs, args.min_dur, args.max_dur))
    for uttid in texts:
        if uttid not in seen:
            print(f"WARNING: {tag} '{uttid}' has a transcript but no wav.scp entry: ignored",
                  file=sys.stderr)

    results = {}
    if jobs:
        nj = max(1, min(args.nj, len(jobs)))
        if nj == 1:
            outs = map(process_one, jobs)
        else:
            pool = ProcessPoolExecutor(max_workers=nj)
            outs = pool.map(process_one, jobs, chunksize=max(1, len(jobs) // (4 * nj)))
        for uttid, reason, detail in outs:
            if reason is None:
                results[uttid] = detail
            else:
                dropped.append((uttid, reason, detail))
        if nj > 1:
            pool.shutdown()

    for uttid, reason, detail in dropped:
        print(f"WARNING: {tag} dropping utterance '{uttid}': {reason}: {detail}", file=sys.stderr)

    kept = sorted(results)  # C-locale order, as Kaldi tools expect
    with open(os.path.join(args.dst, "wav.scp"), "w", encoding="utf-8") as fw, \
            open(os.path.join(args.dst, "text"), "w", encoding="utf-8") as ft, \
            open(os.path.join(args.dst, "utt2spk"), "w", encoding="utf-8") as fu, \
            open(os.path.join(args.dst, "utt2num_samples"), "w", encoding="utf-8") as fn:
        for uttid in kept:
            fw.write(f"{uttid} {os.path.join(audio_dir, safe_name(uttid) + '.wav')}\n")
            ft.write(f"{uttid} {' '.join(texts[uttid].split())}\n")
            fu.write(f"{uttid} {utt2spk.get(uttid) or uttid}\n")
            fn.write(f"{uttid} {results[uttid]}\n")
    spk2utt = collections.defaultdict(list)
    for uttid in kept:
        spk2utt[utt2spk.get(uttid) or uttid].append(uttid)
    with open(os.path.join(args.dst, "spk2utt"), "w", encoding="utf-8") as f:
        for spk in sorted(spk2utt):
            f.write(f"{spk} {' '.join(spk2utt[spk])}\n")
    with open(os.path.join(args.dst, "feats_type"), "w") as f:
        f.write("raw\n")
    with open(os.path.join(args.dst, "fs"), "w") as f:
        f.write(f"{fs}\n")
    with open(os.path.join(args.dst, "dropped.txt"), "w", encoding="utf-8") as f:
        for uttid, reason, detail in sorted(dropped):
            f.write(f"{uttid}\t{reason}\t{detail}\n")

    counts = collections.Counter(r for _, r, _ in dropped)
    total = len(seen)
    hours = sum(results.values()) / fs / 3600
    by_reason = ", ".join(f"{r}={counts[r]}" for r in REASONS if counts[r])
    summary = (f"{tag} kept {len(kept)} of {total} utterances ({hours:.3f} h at {fs} Hz); "
               f"dropped {len(dropped)}" + (f": {by_reason}" if dropped else ""))
    print(summary)
    with open(os.path.join(args.dst, "summary.txt"), "w", encoding="utf-8") as f:
        f.write(summary + "\n")
    if not kept:
        print(f"ERROR: {tag} no usable utterance left in {args.src}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
