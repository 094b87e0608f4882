#!/usr/bin/env python3
"""Stage 3 of asr.sh: check that a token list has ESPnet's layout.

``<blank>`` first, ``<unk>`` second, ``<sos/eos>`` last, no duplicates, no empty line.
"""

import sys


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: check_token_list.py tokens.txt", file=sys.stderr)
        return 2
    path = argv[0]
    with open(path, encoding="utf-8") as f:
        tokens = [line.rstrip("\n") for line in f]
    problems = []
    if len(tokens) < 4:
        problems.append(f"only {len(tokens)} tokens")
    if tokens[:2] != ["<blank>", "<unk>"]:
        problems.append(f"first tokens are {tokens[:2]}, expected ['<blank>', '<unk>']")
    if not tokens or tokens[-1] != "<sos/eos>":
        problems.append("last token is not <sos/eos>")
    if any(not t or " " in t for t in tokens):
        problems.append("empty token or token with a space")
    if len(set(tokens)) != len(tokens):
        problems.append("duplicate tokens")
    if problems:
        print(f"ERROR: {path}: " + "; ".join(problems), file=sys.stderr)
        return 1
    print(f"{path}: {len(tokens)} tokens")
    return 0


if __name__ == "__main__":
    sys.exit(main())
