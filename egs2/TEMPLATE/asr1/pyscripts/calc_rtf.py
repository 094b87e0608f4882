#!/usr/bin/env python3
"""Stage 6 of asr.sh: real-time factor of one decoded test set.

Two numbers are reported:
  * RTF (wall): wall-clock time of the whole parallel decoding step (process start-up and model
    loading included) divided by the duration of the decoded audio.  This is what a user waits.
  * RTF (decode only): the summed per-utterance decoding time divided by the audio duration,
    i.e. the cost of one job decoding everything.  Each utterance's time is read from ESPnet's
    asr_inference log: from its "speech length" line to the following "best hypo" line
    (the same markers ESPnet's own RTF script uses).
Writes ``--out`` (text, one ``key: value`` a line) and prints a one-line summary.
"""

import argparse
import datetime
import re
import sys

TS = re.compile(r"^(\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2},\d{3}) ")


def parse_time(s):
    return datetime.datetime.strptime(s, "%Y-%m-%d %H:%M:%S,%f")


def decode_seconds(log_path):
    """Sum over utterances of (best hypo time - speech length time); also the count."""
    total, n, start = 0.0, 0, None
    with open(log_path, encoding="utf-8", errors="replace") as f:
        for line in f:
            m = TS.match(line)
            if not m:
                continue
            if "speech length" in line:
                start = parse_time(m.group(1))
            elif "best hypo" in line and start is not None:
                total += (parse_time(m.group(1)) - start).total_seconds()
                n += 1
                start = None
    return total, n


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--name", required=True, help="test set name")
    p.add_argument("--utt2num_samples", required=True)
    p.add_argument("--keys", nargs="+", required=True, help="key files that were decoded")
    p.add_argument("--logs", nargs="+", required=True, help="asr_inference logs")
    p.add_argument("--fs", type=float, default=16000)
    p.add_argument("--start", type=float, required=True, help="epoch seconds, decoding start")
    p.add_argument("--end", type=float, required=True, help="epoch seconds, decoding end")
    p.add_argument("--nj", type=int, required=True)
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)

    nsamp = {}
    with open(args.utt2num_samples, encoding="utf-8") as f:
        for line in f:
            parts = line.split()
            if len(parts) == 2:
                nsamp[parts[0]] = int(parts[1])
    keys = []
    for kf in args.keys:
        with open(kf, encoding="utf-8") as f:
            keys += [line.split()[0] for line in f if line.strip()]
    audio = sum(nsamp.get(k, 0) for k in keys) / args.fs
    wall = args.end - args.start
    dec, ndec = 0.0, 0
    for lp in args.logs:
        s, n = decode_seconds(lp)
        dec += s
        ndec += n
    rtf_wall = wall / audio if audio > 0 else float("nan")
    rtf_dec = dec / audio if audio > 0 and ndec else float("nan")
    info = {
        "dataset": args.name,
        "utterances": len(keys),
        "audio_seconds": f"{audio:.3f}",
        "jobs": args.nj,
        "wall_seconds": f"{wall:.3f}",
        "rtf_wall": f"{rtf_wall:.4f}",
        "decode_seconds": f"{dec:.3f}",
        "decoded_utterances_in_logs": ndec,
        "rtf_decode_only": f"{rtf_dec:.4f}",
    }
    with open(args.out, "w", encoding="utf-8") as f:
        for k, v in info.items():
            f.write(f"{k}: {v}\n")
    print(f"RTF {args.name}: {len(keys)} utts, {audio:.1f} s of audio decoded in {wall:.1f} s "
          f"wall with {args.nj} job(s): RTF (wall) {rtf_wall:.4f}; "
          f"RTF (decode only, 1 job) {rtf_dec:.4f} ({dec:.1f} s over {ndec} utts)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
