#!/usr/bin/env python3
"""Stage 3 of asr.sh (token_type=bpe): train a sentencepiece model on a Kaldi ``text`` file.

The first field (utterance id) of each line is dropped.  ``--vocab_size`` is a soft limit
(``hard_vocab_limit=false``): on a tiny corpus the model gets as many pieces as the text allows,
and a warning says so, instead of failing.
"""

import argparse
import os
import sys
import tempfile

import sentencepiece as spm


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--text", required=True, help="Kaldi text file (uttid transcript)")
    p.add_argument("--model_prefix", required=True, help="writes <prefix>.model/.vocab")
    p.add_argument("--vocab_size", type=int, required=True)
    p.add_argument("--model_type", default="unigram", choices=["unigram", "bpe"])
    p.add_argument("--character_coverage", type=float, default=1.0)
    p.add_argument("--input_sentence_size", type=int, default=100000000)
    p.add_argument("--user_defined_symbols", default="", help="comma separated")
    args = p.parse_args(argv)

    os.makedirs(os.path.dirname(os.path.abspath(args.model_prefix)), exist_ok=True)
    n = 0
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False, encoding="utf-8") as tmp:
        with open(args.text, encoding="utf-8") as f:
            for line in f:
                parts = line.strip().split(maxsplit=1)
                if len(parts) == 2:
                    tmp.write(parts[1] + "\n")
                    n += 1
    if n == 0:
        print(f"ERROR: no transcript in {args.text}", file=sys.stderr)
        return 1
    try:
        kw = dict(
            input=tmp.name,
            model_prefix=args.model_prefix,
            vocab_size=args.vocab_size,
            model_type=args.model_type,
            character_coverage=args.character_coverage,
            input_sentence_size=args.input_sentence_size,
            hard_vocab_limit=False,
        )
        if args.user_defined_symbols:
            kw["user_defined_symbols"] = args.user_defined_symbols
        spm.SentencePieceTrainer.train(**kw)
    finally:
        os.unlink(tmp.name)
    size = spm.SentencePieceProcessor(model_file=args.model_prefix + ".model").get_piece_size()
    if size < args.vocab_size:
        print(f"WARNING: the text ({n} lines) only supports {size} pieces; asked for "
              f"{args.vocab_size}", file=sys.stderr)
    print(f"sentencepiece {args.model_type} model {args.model_prefix}.model: {size} pieces "
          f"from {n} lines")
    return 0


if __name__ == "__main__":
    sys.exit(main())
