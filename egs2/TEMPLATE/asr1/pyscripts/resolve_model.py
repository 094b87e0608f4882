#!/usr/bin/env python3
"""Pick the checkpoint file name (relative to the experiment dir) that asr.sh decodes and packs.

With ``--model NAME`` that file must exist.  Without it, ESPnet's own choice is followed: the
trainer averages the ``keep_nbest_models`` best epochs of each ``best_model_criterion`` entry into
``<phase>.<key>.ave.pth``, so the first criterion of the experiment's ``config.yaml`` names the
default (``valid.acc.ave.pth`` for the big configs, ``valid.loss.ave.pth`` for conf/tiny).  When
that file is missing (e.g. the criterion was never reported), the first existing of
``valid.acc.ave.pth``, ``valid.loss.ave.pth``, ``valid.acc.best.pth``, ``valid.loss.best.pth``,
``latest.pth`` is used, with a warning on stderr.
"""

import argparse
import os
import sys

import yaml

FALLBACKS = (
    "valid.acc.ave.pth",
    "valid.loss.ave.pth",
    "valid.acc.best.pth",
    "valid.loss.best.pth",
    "latest.pth",
)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--exp_dir", required=True)
    p.add_argument("--model", default="", help="explicit file name; empty = from config.yaml")
    args = p.parse_args(argv)

    if args.model:
        if not os.path.exists(os.path.join(args.exp_dir, args.model)):
            print(f"ERROR: --inference_asr_model {args.model}: "
                  f"{os.path.join(args.exp_dir, args.model)} does not exist", file=sys.stderr)
            return 1
        print(args.model)
        return 0

    preferred = []
    config = os.path.join(args.exp_dir, "config.yaml")
    if os.path.isfile(config):
        with open(config, encoding="utf-8") as f:
            conf = yaml.safe_load(f) or {}
        for crit in conf.get("best_model_criterion") or []:
            if len(crit) >= 2:
                preferred.append(f"{crit[0]}.{crit[1]}.ave.pth")
                break
    candidates = preferred + [c for c in FALLBACKS if c not in preferred]
    for i, name in enumerate(candidates):
        if os.path.exists(os.path.join(args.exp_dir, name)):
            if preferred and i > 0:
                print(f"WARNING: {os.path.join(args.exp_dir, preferred[0])} does not exist; "
                      f"using {name}", file=sys.stderr)
            print(name)
            return 0
    print(f"ERROR: no trained model in {args.exp_dir} (looked for {', '.join(candidates)}); "
          "run the training stage first", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
