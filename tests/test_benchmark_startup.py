"""benchmarks/startup_hook.py."""
import json

import pytest

import bench_helpers  # noqa: F401  (puts benchmarks/ on sys.path)


def test_startup_hook_benchmark_measures_every_variant(tmp_path, capsys):
    """benchmarks/startup_hook.py on two rounds: every variant timed, overheads relative to the
    venv without the hook, the hook module found in -X importtime; bad counts rejected."""
    import startup_hook

    out = tmp_path / "startup.json"
    startup_hook.main(["--warmup", "0", "--repeats", "2", "--out", str(out)])
    result = json.loads(out.read_text())
    assert set(result["median_ms"]) == {"no hook", "hook", "hook, ESPNET_OMNIROUTER_NO_HOOK=1",
                                        "floor (.pth importing an empty module)"}
    assert all(len(times) == 2 and min(times) > 0 for times in result["times_s"].values())
    for name, ms in result["median_ms"].items():
        assert result["overhead_ms"][name] == pytest.approx(ms - result["median_ms"]["no hook"])
    assert result["hook_import_self_us_median"] > 0
    assert "espnet_omnirouter_hook import (-X importtime" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="--repeats must be >= 1"):
        startup_hook.main(["--repeats", "0"])
