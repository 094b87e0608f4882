"""The README's commands, links and shape stay honest.

Every relative link of README.md (and benchmarks/README.md) points at a file of the repository, and
an ``#anchor`` at a heading of the target; every repository path the README names in backticks
exists; every ``make`` target it names is a Makefile target; every ``python -m espnet_omnirouter.*``
module and ``from espnet_omnirouter.X import Y`` is in the package.  Shape: no table cell over
200 characters, no line outside tables over 120, no paragraph or list item over 700 characters, and
the first screen holds what it is, install and the two commands.

The checks are functions of the README's text and a repository root, so the tests below also run
them on a copy of the repository with a linked file renamed (and with other breakages), which must
fail.  benchmarks/README.md, the speed reports and the recipe README: their links exist, and
make_reports.py keeps the reports' hand-written parts and writes exactly their committed tables.

Adding a section to the README: a "##" section above "## Results"; a new headline number is one
row of the Results table, linking to the report that holds the details.
"""

import re
import shutil
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

MAX_CELL = 200
MAX_LINE = 120
MAX_BLOCK = 700
FIRST_SCREEN = 50
# Backticked words starting with one of these are repository paths (unless they hold a placeholder).
REPO_DIRS = ("conf/", "egs2/", "benchmarks/", "espnet_omnirouter/", "tests/")
PLACEHOLDER = re.compile(r"[*<>{}]|\.\.\.")


def _strip_code(text):
    """The text with fenced code blocks blanked (line numbers kept)."""
    out, fenced = [], False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
            out.append("")
        else:
            out.append("" if fenced else line)
    return out


def _code_blocks(text):
    return re.findall(r"^```[^\n]*\n(.*?)^```", text, flags=re.S | re.M)


def slug(heading):
    """GitHub's anchor for a heading: lower case, punctuation but ``-`` and ``_`` dropped, spaces to ``-``."""
    text = re.sub(r"[`*]", "", heading.strip().lower())
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(md_text):
    seen, out = {}, set()
    for line in _strip_code(md_text):
        m = re.match(r"#{1,6}\s+(.*)", line)
        if m:
            s = slug(m.group(1))
            n = seen.get(s, 0)
            out.add(s if n == 0 else f"{s}-{n}")
            seen[s] = n + 1
    return out


def link_problems(md_path, root):
    """Relative links of ``md_path`` whose file (or ``#anchor`` heading) is missing under ``root``."""
    md_path, root = Path(md_path), Path(root)
    text = md_path.read_text(encoding="utf-8")
    problems = []
    prose = "\n".join(_strip_code(text))
    for target in re.findall(r"\]\(([^)\s]+)\)", prose):
        if re.match(r"[a-z]+:", target):  # https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        file = (md_path.parent / path).resolve() if path else md_path.resolve()
        if not file.is_relative_to(root.resolve()):
            problems.append(f"{target}: outside the repository")
        elif not file.exists():
            problems.append(f"{target}: no file {file.relative_to(root.resolve())}")
        elif anchor and file.suffix == ".md" and anchor not in anchors(file.read_text(encoding="utf-8")):
            problems.append(f"{target}: no heading #{anchor} in {file.relative_to(root.resolve())}")
    return problems


def path_problems(text, root):
    """Repository paths named in backticks in the prose, and in the Layout block, that do not exist."""
    names = re.findall(r"`([^`\s]+)`", "\n".join(_strip_code(text)))
    for block in _code_blocks(text):
        names += [line.split()[0] for line in block.splitlines() if line.startswith("espnet_omnirouter/")]
    return sorted({n for n in names if n.startswith(REPO_DIRS) and not PLACEHOLDER.search(n)
                   and not (Path(root) / n).exists()})


def make_targets(makefile):
    return set(re.findall(r"^([A-Za-z0-9_.-]+)\s*:(?!=)", Path(makefile).read_text(), flags=re.M))


def command_problems(text, root):
    """``make X`` targets missing from the Makefile, ``python -m espnet_omnirouter.*`` modules and
    ``from espnet_omnirouter.X import Y`` names missing from the package."""
    root = Path(root)
    problems = []
    targets = make_targets(root / "Makefile")
    code = re.findall(r"`make ([a-z][\w-]*)", text)  # inline code
    code += [m for block in _code_blocks(text) for m in re.findall(r"^make ([a-z][\w-]*)", block, flags=re.M)]
    for target in code:
        if target not in targets:
            problems.append(f"make {target}: no such target in the Makefile")
    for module in re.findall(r"python -m (espnet_omnirouter\w*(?:\.\w+)*)", text):
        file = root / (module.replace(".", "/") + ".py")
        if not file.exists():
            problems.append(f"python -m {module}: no file {file.relative_to(root)}")
    for module, names in re.findall(r"from (espnet_omnirouter\w*(?:\.\w+)*) import ([\w, ]+)", text):
        file = root / (module.replace(".", "/") + ".py")
        if not file.exists():
            file = root / module.replace(".", "/") / "__init__.py"
        if not file.exists():
            problems.append(f"from {module}: no module")
            continue
        source = file.read_text()
        for name in (n.strip() for n in names.split(",")):
            if not re.search(rf"^(def|class) {name}\b|^{name}\s*=|^from \S+ import .*\b{name}\b", source, flags=re.M):
                problems.append(f"from {module} import {name}: {name} not defined in {file.relative_to(root)}")
    return problems


def shape_problems(text):
    problems = []
    in_code = False
    block, block_start = [], 0

    def end_block():
        size = len(" ".join(s.strip() for s in block))
        if size > MAX_BLOCK:
            problems.append(f"line {block_start}: paragraph of {size} characters > {MAX_BLOCK}")

    for i, line in enumerate(text.splitlines(), 1):
        if line.lstrip().startswith("```"):
            in_code = not in_code
        is_table = line.startswith("|")
        if is_table and not in_code:
            for cell in line.strip().strip("|").split(" | "):
                if len(cell.strip()) > MAX_CELL:
                    problems.append(f"line {i}: table cell of {len(cell.strip())} characters > {MAX_CELL}")
        elif len(line) > MAX_LINE:
            problems.append(f"line {i}: {len(line)} characters > {MAX_LINE}")
        new_item = re.match(r"\s*([-*]|\d+\.)\s", line)
        if in_code or is_table or not line.strip() or line.startswith("#") or new_item:
            if block:
                end_block()
            block, block_start = [], i
        if line.strip() and not (in_code or is_table or line.startswith("#") or line.lstrip().startswith("```")):
            block.append(line)
    if block:
        end_block()
    return problems


def first_screen_problems(text):
    """What it is, install and the two commands (with their expectations) within the first screen."""
    lines = text.splitlines()
    problems = []
    heads = {line: i for i, line in enumerate(lines) if line.startswith("## ")}
    for head in ("## Install", "## The two commands"):
        if head not in heads:
            problems.append(f"no section {head!r}")
    if problems:
        return problems
    end = next((i for i, line in enumerate(lines) if line.startswith("## ") and i > heads["## The two commands"]),
               len(lines))
    if end > FIRST_SCREEN:
        problems.append(f"'## The two commands' ends at line {end}, beyond the first screen ({FIRST_SCREEN} lines)")
    if not lines[2].strip() or heads["## Install"] < 3:
        problems.append("no description of what this is before '## Install'")
    section = "\n".join(lines[heads["## The two commands"]:end])
    for cmd in ("make demo", "make test"):
        if not re.search(rf"^- `{cmd}`: .*\d", section, flags=re.M):
            problems.append(f"no expectation line '- `{cmd}`: ...' with a number under '## The two commands'")
    return problems


def readme_problems(root):
    root = Path(root)
    text = (root / "README.md").read_text(encoding="utf-8")
    return (link_problems(root / "README.md", root) + path_problems(text, root) + command_problems(text, root)
            + shape_problems(text) + first_screen_problems(text))


def test_readme_links_paths_and_commands_exist():
    assert readme_problems(REPO) == []


def benchmark_documents():
    """The hand-maintained Markdown of the studies: benchmarks/README.md, the recipe READMEs and the
    speed reports that make_reports.py fills in."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    import make_reports

    docs = [REPO / "benchmarks" / "README.md", *sorted(REPO.glob("egs2/*/asr1/README.md"))]
    return docs + [REPO / "benchmarks" / "results" / r for r in make_reports.REPORTS]


def test_benchmark_documents_links_exist():
    docs = benchmark_documents()
    assert len(docs) >= 6 and all(d.is_file() for d in docs)
    assert {d: link_problems(d, REPO) for d in docs} == {d: [] for d in docs}


def test_speed_reports_are_what_their_json_make(tmp_path):
    """make_reports.py rewrites only the generated part of each report: the committed reports are what
    their JSON files make (--check), the hand-written parts stay, and an edited table is caught."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    import make_reports

    results = tmp_path / "results"
    shutil.copytree(REPO / "benchmarks" / "results", results, ignore=shutil.ignore_patterns("*_runs", "*.png"))
    make_reports.main(["--results", str(results), "--check"])
    make_reports.main(["--results", str(results)])
    for report in make_reports.REPORTS:
        assert (results / report).read_text(encoding="utf-8") == (REPO / "benchmarks" / "results" / report).read_text(encoding="utf-8")
    assert "## Shared machine: CPU contention" in (results / "ffn_speed.md").read_text(encoding="utf-8")
    edited = results / "training_step.md"
    edited.write_text(edited.read_text(encoding="utf-8").replace("| dense |", "| dense (edited) |", 1), encoding="utf-8")
    with pytest.raises(SystemExit, match="training_step.md"):
        make_reports.main(["--results", str(results), "--check"])


def test_readme_names_the_commands_it_checks():
    """The checks see what they should: otherwise an empty README would pass them."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    assert {"demo", "test"} <= set(re.findall(r"make ([a-z]+)", text)) <= make_targets(REPO / "Makefile")
    assert {"asr_train", "asr_inference", "analyze_routing"} <= set(
        re.findall(r"python -m espnet_omnirouter\.bin\.(\w+)", text))
    assert len(re.findall(r"\]\((?!https?:)[^)]+\)", text)) >= 5
    assert "conf/train_asr_conformer.yaml" in re.findall(r"`([^`\s]+)`", text)


def _copy(tmp_path):
    """A copy of the repository's sources and documents (no git, venv, caches or recipe outputs)."""
    dst = tmp_path / "repo"
    ignore = shutil.ignore_patterns(".git", ".venv", "__pycache__", ".pytest_cache", "*.egg-info",
                                    "exp", "dump", "data", "downloads")
    shutil.copytree(REPO, dst, ignore=ignore, symlinks=True)
    return dst


def test_checks_pass_on_a_copy_and_fail_when_a_linked_file_is_renamed(tmp_path):
    repo = _copy(tmp_path)
    assert readme_problems(repo) == []
    (repo / "benchmarks/results/quality.md").rename(repo / "benchmarks/results/quality_report.md")
    problems = readme_problems(repo)
    assert any("benchmarks/results/quality.md: no file" in p for p in problems), problems


@pytest.mark.parametrize("edit, expected", [
    (lambda t: t.replace("make test", "make tests", 1), "make tests: no such target"),
    (lambda t: t.replace("espnet_omnirouter.bin.asr_train", "espnet_omnirouter.bin.train", 1), "no file"),
    (lambda t: t.replace("decoding_speed.md#findings", "decoding_speed.md#what-it-found", 1), "no heading"),
    (lambda t: t.replace("`conf/train_lm.yaml`", "`conf/train_lm_big.yaml`", 1), None),
    (lambda t: t.replace("import load_speech2text", "import load_model", 1), "load_model not defined"),
    (lambda t: t.replace("## Results\n", "## Results\n\n| a | " + "x" * 201 + " |\n", 1), "table cell of 201"),
    (lambda t: t.replace("## Results\n", "## Results\n\n" + "word " * 30 + "\n", 1), "characters > 120"),
    (lambda t: t.replace("## Install\n", "## Install\n" + "\n" * 40, 1), "beyond the first screen"),
])
def test_checks_fail_on_a_broken_readme(tmp_path, edit, expected):
    repo = _copy(tmp_path)
    readme = repo / "README.md"
    readme.write_text(edit(readme.read_text(encoding="utf-8")), encoding="utf-8")
    problems = readme_problems(repo)
    if expected is None:  # a missing path named in backticks
        assert path_problems(readme.read_text(), repo) == ["conf/train_lm_big.yaml"], problems
    else:
        assert any(expected in p for p in problems), problems
