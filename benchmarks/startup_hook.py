"""Start-up cost of the installed hook for a Python process that never imports ESPnet.

Builds this checkout's wheel and installs it into three throw-away venvs (tests/installs.py)
that differ only in the hook's ``espnet_omnirouter_hook.pth``: kept in one, deleted in the
second, and in the third replaced by a .pth that imports an empty module (the floor: what
any .pth that imports a module costs).  Then times ``python -c pass`` in each, rounds
interleaved (no hook, hook, hook switched off by ``ESPNET_OMNIROUTER_NO_HOOK=1``, floor, no
hook, ...; see _bench.time_interleaved), medians of the kept rounds.  Also the hook module's
own import time from ``python -X importtime -c pass`` (median over up to 50 runs).

    .venv/bin/python benchmarks/startup_hook.py [--repeats 200] [--out benchmarks/results/startup_hook.json]
"""
import argparse
import importlib.util
import os
import py_compile
import re
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests"))
import _bench  # noqa: E402
from _report import write_json  # noqa: E402
import torch  # noqa: E402
from installs import HOOK_MODULE, HOOK_PTH, NO_HOOK_ENV, build_wheel, fresh_env, make_venv, site_packages  # noqa: E402


FLOOR_MODULE = "startup_floor_empty"


def hook_import_us(python: str, env: dict, cwd: str) -> int:
    """Self time (µs) of the hook module's import in ``python -X importtime -c pass``."""
    err = subprocess.run([python, "-X", "importtime", "-c", "pass"], capture_output=True, text=True,
                         env=env, cwd=cwd, check=True).stderr
    match = re.search(rf"import time:\s*(\d+) \|\s*\d+ \|\s*{HOOK_MODULE}$", err, re.M)
    if not match:
        raise RuntimeError(f"{HOOK_MODULE} is not imported at start-up of {python}:\n{err[-2000:]}")
    return int(match.group(1))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--warmup", type=int, default=5, help="rounds dropped")
    parser.add_argument("--repeats", type=int, default=200, help="rounds kept")
    parser.add_argument("--out", default=None, help="results JSON")
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.warmup < 0:
        raise SystemExit("--repeats must be >= 1 and --warmup >= 0")

    work = tempfile.mkdtemp(prefix="startup_hook_")
    try:
        wheel = build_wheel(os.path.join(work, "build"))
        with_hook = make_venv(os.path.join(work, "hook"), wheel)
        without = os.path.join(work, "no_hook")
        no_hook = make_venv(without, wheel)
        os.remove(os.path.join(site_packages(without), HOOK_PTH))
        floor_dir = os.path.join(work, "floor")
        floor = make_venv(floor_dir, wheel)
        with open(os.path.join(site_packages(floor_dir), HOOK_PTH), "w") as f:
            f.write(f"import {FLOOR_MODULE}\n")
        empty = os.path.join(site_packages(floor_dir), FLOOR_MODULE + ".py")
        open(empty, "w").close()
        py_compile.compile(empty, cfile=importlib.util.cache_from_source(empty))  # as pip compiles ours
        env, off = fresh_env(), fresh_env(**{NO_HOOK_ENV: "1"})

        def start(python, environment):
            return lambda: subprocess.run([python, "-c", "pass"], env=environment, cwd=work, check=True)

        steps = {"no hook": start(no_hook, env), "hook": start(with_hook, env),
                 f"hook, {NO_HOOK_ENV}=1": start(with_hook, off), "floor (.pth importing an empty module)": start(floor, env)}
        times, _ = _bench.time_interleaved(steps, torch.device("cpu"), args.warmup, args.repeats)
        hook_us = [hook_import_us(with_hook, env, work) for _ in range(min(args.repeats, 50))]
    finally:
        shutil.rmtree(work, ignore_errors=True)

    medians = {name: _bench.median(t) * 1e3 for name, t in times.items()}
    base = medians["no hook"]
    print(f"python -c pass, median of {args.repeats} interleaved rounds ({args.warmup} dropped), ms:")
    for name, ms in medians.items():
        print(f"  {name:40s} {ms:7.2f}   {ms - base:+6.2f} ms vs no hook")
    print(f"  {HOOK_MODULE} import (-X importtime, self, median of {len(hook_us)}): {_bench.median(hook_us)} µs")
    if args.out:
        write_json(args.out, {
            "machine": _bench.machine_info(torch.device("cpu")),
            "config": {"warmup": args.warmup, "repeats": args.repeats, "python": sys.version.split()[0],
                       "commit": _bench.git_commit()},
            "median_ms": medians,
            "overhead_ms": {name: ms - base for name, ms in medians.items()},
            "hook_import_self_us_median": _bench.median(hook_us),
            "times_s": times,
        })


if __name__ == "__main__":
    main()
