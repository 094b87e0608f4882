"""No report, results JSON, README or RESULTS.md names a directory of the machine it was made on:
paths are written relative to the repository root (benchmarks/_report.py)."""
import json
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

from _report import checkout_relative, write_json  # noqa: E402

# an absolute path under a directory where checkouts, homes and scratch space live
ABSOLUTE = re.compile(r"(?<![\w.~/-])/(?:work|tmp|home|root|Users|mnt|opt|var|data|scratch|private|srv)/[\w.+-]")


def documents():
    """README.md, RESULTS.md, every Markdown file under benchmarks/ and egs2/, every JSON under
    benchmarks/ (tracked or new; ignored files such as exp/ left out)."""
    names = subprocess.run(
        ["git", "-C", str(REPO), "ls-files", "--cached", "--others", "--exclude-standard"],
        check=True, capture_output=True, text=True,
    ).stdout.splitlines()
    return [
        REPO / n for n in names
        if (n == "README.md" or n.endswith("RESULTS.md")
            or (n.startswith(("benchmarks/", "egs2/")) and n.endswith(".md"))
            or (n.startswith("benchmarks/") and n.endswith(".json")))
        and (REPO / n).is_file()
    ]


def test_no_absolute_paths_in_reports_and_readmes():
    docs = documents()
    assert any(p.name == "quality.json" for p in docs) and any(p.name == "README.md" for p in docs)
    found = []
    for path in docs:
        for i, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            found += [f"{path.relative_to(REPO)}:{i}: {m.group(0)}..." for m in ABSOLUTE.finditer(line)]
    assert not found, "absolute paths (write them relative to the repository root):\n" + "\n".join(found[:20])


def test_the_pattern_finds_what_the_writers_remove():
    assert ABSOLUTE.search("exp `/tmp/q7/egs2/synth_en/asr1/exp`") and ABSOLUTE.search('"/root/out/x.json"')
    assert not ABSOLUTE.search("see /proc/pressure/cpu, https://github.com/tmp/x and conf/tmp/y")


def test_writers_make_paths_relative(tmp_path):
    assert checkout_relative({"a": ["/x/y/conf/z.yaml", "keep /abs/other"]}) == {"a": ["conf/z.yaml", "keep /abs/other"]}
    out = tmp_path / "moe_ffn_cuda.json"
    write_json(str(out), {"config": {"out": str(out), "exp": "/tmp/q7/egs2/synth_en/asr1/exp/a", "n": 3}})
    assert json.loads(out.read_text()) == {"config": {"out": "moe_ffn_cuda.json", "exp": "egs2/synth_en/asr1/exp/a", "n": 3}}
