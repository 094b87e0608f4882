#!/usr/bin/env python3
"""Kaldi-style data dirs from a standard LibriSpeech tree (no download, no Kaldi).

Reads ``<librispeech_dir>/<subset>/<SPEAKER>/<CHAPTER>/<SPEAKER>-<CHAPTER>-<NNNN>.flac`` with
``<SPEAKER>-<CHAPTER>.trans.txt`` beside them and writes ``data/<subset with _>/{wav.scp,text,
utt2spk,spk2utt}`` (speaker = SPEAKER-CHAPTER, as ESPnet's recipe does).  ``data/dev`` is
dev-clean + dev-other.
"""
import argparse
import sys
from pathlib import Path

SUBSETS = ["train-clean-100", "dev-clean", "dev-other", "test-clean", "test-other"]


def read_subset(root: Path):
    """Yield (utt, flac path, transcript) of one subset, checking the layout."""
    trans_files = sorted(root.glob("*/*/*.trans.txt"))
    if not trans_files:
        raise SystemExit(f"{root}: no SPEAKER/CHAPTER/*.trans.txt found (is this a LibriSpeech subset?)")
    for trans in trans_files:
        for lineno, line in enumerate(trans.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            utt, _, text = line.partition(" ")
            flac = trans.parent / f"{utt}.flac"
            if not text.strip():
                print(f"{trans}:{lineno}: {utt}: empty transcript, skipped", file=sys.stderr)
                continue
            if not flac.exists():
                print(f"{trans}:{lineno}: {utt}: missing audio {flac}, skipped", file=sys.stderr)
                continue
            yield utt, flac.resolve(), " ".join(text.split())


def write_dir(out: Path, entries):
    out.mkdir(parents=True, exist_ok=True)
    entries = sorted(entries)
    spk2utt = {}
    with open(out / "wav.scp", "w") as wav, open(out / "text", "w") as txt, open(out / "utt2spk", "w") as u2s:
        for utt, flac, text in entries:
            spk = utt.rsplit("-", 1)[0]
            wav.write(f"{utt} {flac}\n")
            txt.write(f"{utt} {text}\n")
            u2s.write(f"{utt} {spk}\n")
            spk2utt.setdefault(spk, []).append(utt)
    with open(out / "spk2utt", "w") as f:
        for spk in sorted(spk2utt):
            f.write(f"{spk} {' '.join(spk2utt[spk])}\n")
    print(f"{out}: {len(entries)} utterances, {len(spk2utt)} speakers")


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--librispeech_dir", required=True, help="folder holding train-clean-100/, dev-clean/, ...")
    parser.add_argument("--data_dir", default="data")
    parser.add_argument("--subsets", nargs="+", default=SUBSETS)
    args = parser.parse_args()
    root = Path(args.librispeech_dir)
    missing = [s for s in args.subsets if not (root / s).is_dir()]
    if missing:
        raise SystemExit(
            f"LibriSpeech subsets not found under {root}: {' '.join(missing)}\n"
            "This recipe does not download. Get them from https://www.openslr.org/12 "
            "(train-clean-100.tar.gz, dev-clean.tar.gz, dev-other.tar.gz, test-clean.tar.gz, "
            f"test-other.tar.gz), extract them so that {root}/<subset>/<SPEAKER>/<CHAPTER>/ exists, "
            "and pass --librispeech_dir (or set LIBRISPEECH in db.sh)."
        )
    data = Path(args.data_dir)
    subsets = {s: list(read_subset(root / s)) for s in args.subsets}
    for name, entries in subsets.items():
        write_dir(data / name.replace("-", "_"), entries)
    if "dev-clean" in subsets and "dev-other" in subsets:
        write_dir(data / "dev", subsets["dev-clean"] + subsets["dev-other"])


if __name__ == "__main__":
    main()
