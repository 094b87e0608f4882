#!/usr/bin/env python3
"""Print one top-level value of a YAML config (empty output when the key is absent or null).

Used by asr.sh, e.g. ``config_value.py conf/train.yaml normalize``.
"""

import sys

import yaml


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2:
        print("usage: config_value.py CONFIG KEY", file=sys.stderr)
        return 2
    with open(argv[0], encoding="utf-8") as f:
        conf = yaml.safe_load(f) or {}
    value = conf.get(argv[1])
    if value is not None:
        print(value)
    return 0


if __name__ == "__main__":
    sys.exit(main())
