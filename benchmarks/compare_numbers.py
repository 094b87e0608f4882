#!/usr/bin/env python3
"""Which numbers and figures of the documents at a git revision are missing from the work tree.

    python benchmarks/compare_numbers.py --base <rev>    # exit status 1 when something is missing

Documents: ``README.md``, every Markdown file under ``benchmarks/`` (the generated reports included)
and ``egs2/*/asr1/README.md``, ``RESULTS.md``.  A number is a token such as ``46.5``, ``-7.5%``,
``1.23x`` or ``14.0 ms`` (its unit kept).  Each number written at ``<rev>`` must still be written
somewhere now (it may move from one document to another); where one was written several times, the
occurrences now missing are listed too, for information (a summary repeated in two places may be
written once).  Figures: every PNG under ``benchmarks/`` at ``<rev>`` must still be there, by content
(moved or not).  Exit status 1 when a number or a figure is missing.
"""
import argparse
import collections
import fnmatch
import hashlib
import os
import re
import subprocess
import sys
from typing import Dict, Iterable, List, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCUMENTS = ("README.md", "benchmarks/*.md", "egs2/*/asr1/RESULTS.md", "egs2/*/asr1/README.md")
FIGURES = ("benchmarks/*.png",)  # fnmatch: * spans directories
# a number not inside a word (commit hashes, names), with its sign and unit
NUMBER = re.compile(r"(?<![\w.])[-+−]?\d+(?:[.,]\d+)*(?:\s?(?:%|x|ms|s|min|h|MiB|GiB|KiB)(?![\w]))?(?![\w])")


def numbers(text: str) -> List[str]:
    """The number tokens of ``text``, normalised (``−`` as ``-``, one space before a unit removed)."""
    return [m.group(0).replace("−", "-").replace(" ", "") for m in NUMBER.finditer(text)]


def matches(path: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatch(path, p) for p in patterns) and "/.venv/" not in path


def git(*args: str) -> bytes:
    return subprocess.run(["git", "-C", ROOT, *args], check=True, capture_output=True).stdout


def files_at(rev: str, patterns: Iterable[str]) -> Dict[str, bytes]:
    """{path: content} of the tracked files matching ``patterns`` at ``rev``."""
    names = git("ls-tree", "-r", "--name-only", rev).decode().splitlines()
    return {n: git("show", f"{rev}:{n}") for n in names if matches(n, patterns)}


def files_now(patterns: Iterable[str]) -> Dict[str, bytes]:
    """{path: content} of the work tree's files matching ``patterns`` (tracked or not, ignored left out)."""
    names = git("ls-files", "--cached", "--others", "--exclude-standard").decode().splitlines()
    out = {}
    for n in names:
        if matches(n, patterns) and os.path.isfile(os.path.join(ROOT, n)):
            with open(os.path.join(ROOT, n), "rb") as f:
                out[n] = f.read()
    return out


def where(docs: Dict[str, bytes]) -> Dict[str, List[Tuple[str, int]]]:
    """{number: [(path, line), ...]} over ``docs``."""
    found = collections.defaultdict(list)
    for path, content in sorted(docs.items()):
        for i, line in enumerate(content.decode("utf-8", "replace").splitlines(), 1):
            for n in numbers(line):
                found[n].append((path, i))
    return found


def compare(before: Dict[str, bytes], after: Dict[str, bytes]):
    """({number written before, nowhere now: [(path, line) before]}, {number written fewer times now:
    occurrences fewer}, totals of occurrences before/after)."""
    b, a = where(before), where(after)
    lost = {n: places for n, places in b.items() if n not in a}
    fewer = {n: len(places) - len(a[n]) for n, places in b.items() if n in a and len(places) > len(a[n])}
    return lost, fewer, sum(map(len, b.values())), sum(map(len, a.values()))


def missing_figures(before: Dict[str, bytes], after: Dict[str, bytes]) -> List[str]:
    now = {hashlib.sha256(c).hexdigest() for c in after.values()}
    return sorted(p for p, c in before.items() if hashlib.sha256(c).hexdigest() not in now)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", required=True, help="git revision to compare the work tree against")
    parser.add_argument("--show", type=int, default=50, help="lost numbers to list")
    args = parser.parse_args(argv)
    before, after = files_at(args.base, DOCUMENTS), files_now(DOCUMENTS)
    lost, fewer, n_before, n_after = compare(before, after)
    figures = missing_figures(files_at(args.base, FIGURES), files_now(FIGURES))
    print(f"documents at {args.base}: {len(before)}, now: {len(after)}; numbers written at {args.base}: {n_before}, "
          f"now: {n_after}; distinct numbers at {args.base}: {len(where(before))}")
    print(f"numbers written at {args.base} and nowhere now: {len(lost)}")
    for n, places in sorted(lost.items(), key=lambda kv: kv[1][0])[: args.show]:
        print(f"  {n}: " + ", ".join(f"{p}:{line}" for p, line in places[:3]) + (" ..." if len(places) > 3 else ""))
    print(f"numbers written fewer times now (still written somewhere): {len(fewer)}, "
          f"{sum(fewer.values())} occurrences")
    print(f"figures at {args.base} missing now: {len(figures)}" + "".join(f"\n  {p}" for p in figures))
    return 1 if lost or figures else 0


if __name__ == "__main__":
    sys.exit(main())
