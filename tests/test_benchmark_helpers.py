"""benchmarks/_bench.py, tested once: the commit and allocator settings recorded, page faults,
interleaved rounds (paths relative to the checkout: test_result_paths.py)."""
import subprocess


from bench_helpers import REPO  # noqa: E402


def test_benchmarks_record_the_commit_they_measure():
    import _bench
    import torch

    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    if head.returncode != 0:  # not a git checkout (e.g. an sdist): nothing to record
        assert _bench.git_commit() is None
        return
    commit = _bench.git_commit()
    assert commit.split("+")[0] == head.stdout.strip()
    changed = subprocess.run(["git", "-C", str(REPO), "diff", "--quiet", "HEAD", "--", ".", *_bench.NOT_CODE]).returncode != 0
    assert commit.endswith("+changes") == changed
    assert _bench.machine_info(torch.device("cpu"))["commit"] == commit


def test_benchmarks_record_allocator_settings(monkeypatch):
    import _bench
    import torch

    monkeypatch.setenv("MALLOC_MMAP_MAX_", "0")
    monkeypatch.setenv("UNRELATED_SETTING", "1")
    env = _bench.machine_info(torch.device("cpu"))["env"]
    assert env["MALLOC_MMAP_MAX_"] == "0" and "UNRELATED_SETTING" not in env


def test_page_faults_counts_fresh_pages():
    """A step that writes 64 MiB of freshly mapped memory faults about once per 4 KiB page;
    a step that writes memory it already touched hardly at all."""
    import mmap

    import _bench
    import torch

    size = 64 * 2**20

    def fresh_pages():
        with mmap.mmap(-1, size) as m:  # anonymous mapping: new pages, whatever malloc does
            torch.frombuffer(m, dtype=torch.uint8).fill_(1)

    assert 0.9 * size / 4096 <= _bench.page_faults(fresh_pages)
    kept = torch.zeros(size // 4)
    assert _bench.page_faults(lambda: kept.fill_(1.0)) < 0.05 * size / 4096


def test_interleaved_rounds_rotate_the_order():
    """time_interleaved runs every step once per round, each round starting one step later,
    and keeps the times of the rounds after the warm-up."""
    import _bench
    import torch

    calls = []
    steps = {name: (lambda name=name: calls.append(name)) for name in "abc"}
    times, slow = _bench.time_interleaved(steps, torch.device("cpu"), warmup=1, repeats=3)
    assert "".join(calls) == "abc" + "bca" + "cab" + "abc"
    assert slow == {} and {k: len(v) for k, v in times.items()} == {"a": 3, "b": 3, "c": 3}
