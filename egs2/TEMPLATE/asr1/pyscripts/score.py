#!/usr/bin/env python3
"""Stage 7 of asr.sh: WER and CER of one decoded test set with jiwer.

Reads the reference and hypothesis Kaldi ``text`` files (utterance id + transcript), collapses
white space, and writes ``<dir>/score_wer/`` and ``<dir>/score_cer/``, each with
  * ``result.txt``: the sclite-like summary (Snt, Wrd, Corr, Sub, Del, Ins, Err, S.Err) and the
    per-utterance alignments,
  * ``summary.json``: the same numbers, read by show_results.py.
Like ESPnet's CER, characters include the space between words.  A reference utterance without a
hypothesis is scored against an empty hypothesis (with a warning); extra hypotheses are ignored.
"""

import argparse
import json
import os
import sys

import jiwer


def read_text(path):
    out = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            parts = line.strip().split(maxsplit=1)
            if not parts:
                continue
            out[parts[0]] = " ".join(parts[1].split()) if len(parts) > 1 else ""
    return out


def per_sentence(alignments):
    rows = []
    for chunks in alignments:
        c = s = d = i = 0
        for ch in chunks:
            n_ref = ch.ref_end_idx - ch.ref_start_idx
            if ch.type == "equal":
                c += n_ref
            elif ch.type == "substitute":
                s += n_ref
            elif ch.type == "delete":
                d += n_ref
            elif ch.type == "insert":
                i += ch.hyp_end_idx - ch.hyp_start_idx
        rows.append((c, s, d, i))
    return rows


def score(keys, refs, hyps, unit):
    ref_list = [refs[k] for k in keys]
    hyp_list = [hyps.get(k, "") for k in keys]
    if unit == "word":
        out = jiwer.process_words(ref_list, hyp_list)
    else:
        out = jiwer.process_characters(ref_list, hyp_list)
    rows = per_sentence(out.alignments)
    n_ref = sum(len(r) for r in out.references)
    corr, sub, dele, ins = (sum(r[j] for r in rows) for j in range(4))
    n_err_snt = sum(1 for r in rows if r[1] + r[2] + r[3] > 0)

    def pct(x, n):
        return round(100.0 * x / n, 1) if n else 0.0

    summary = {
        "Snt": len(keys),
        "Wrd": n_ref,
        "Corr": pct(corr, n_ref),
        "Sub": pct(sub, n_ref),
        "Del": pct(dele, n_ref),
        "Ins": pct(ins, n_ref),
        "Err": pct(sub + dele + ins, n_ref),
        "S.Err": pct(n_err_snt, len(keys)),
        "counts": {"corr": corr, "sub": sub, "del": dele, "ins": ins, "snt_err": n_err_snt},
    }
    return summary, out, rows


def write_result(path, name, unit, keys, summary, out, rows):
    cols = ["Snt", "Wrd", "Corr", "Sub", "Del", "Ins", "Err", "S.Err"]
    with open(path, "w", encoding="utf-8") as f:
        f.write(f"dataset: {name}\nunit: {unit}\n\n")
        f.write("|" + "|".join(cols) + "|\n|" + "|".join("---" for _ in cols) + "|\n")
        f.write("|" + "|".join(str(summary[c]) for c in cols) + "|\n\n")
        f.write(f"| Sum/Avg | {summary['Snt']} {summary['Wrd']} | {summary['Corr']} "
                f"{summary['Sub']} {summary['Del']} {summary['Ins']} {summary['Err']} "
                f"{summary['S.Err']} |\n\n")
        sep = " " if unit == "word" else ""
        for k, ref, hyp, (c, s, d, i) in zip(keys, out.references, out.hypotheses, rows):
            f.write(f"id: ({k})\nScores: (#C #S #D #I) {c} {s} {d} {i}\n")
            f.write(f"REF: {sep.join(ref)}\nHYP: {sep.join(hyp)}\n\n")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--ref", required=True)
    p.add_argument("--hyp", required=True)
    p.add_argument("--dir", required=True, help="decode dir of the test set")
    p.add_argument("--name", default=None)
    args = p.parse_args(argv)
    name = args.name or os.path.basename(os.path.normpath(args.dir))

    refs = read_text(args.ref)
    hyps = read_text(args.hyp)
    keys = sorted(refs)
    if not keys:
        print(f"ERROR: no reference in {args.ref}", file=sys.stderr)
        return 1
    missing = [k for k in keys if k not in hyps]
    for k in missing:
        print(f"WARNING: [{name}] no hypothesis for '{k}': scored as empty", file=sys.stderr)
    for unit, sub in (("word", "score_wer"), ("char", "score_cer")):
        d = os.path.join(args.dir, sub)
        os.makedirs(d, exist_ok=True)
        summary, out, rows = score(keys, refs, hyps, unit)
        summary["dataset"] = name
        summary["missing_hypotheses"] = len(missing)
        write_result(os.path.join(d, "result.txt"), name, unit, keys, summary, out, rows)
        with open(os.path.join(d, "summary.json"), "w", encoding="utf-8") as f:
            json.dump(summary, f, indent=1)
        print(f"{sub[-3:].upper()} {name}: {summary['Err']}% "
              f"(Snt {summary['Snt']}, Wrd {summary['Wrd']}, Sub {summary['Sub']}, "
              f"Del {summary['Del']}, Ins {summary['Ins']}, S.Err {summary['S.Err']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
