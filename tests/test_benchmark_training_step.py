"""The training-step study: op_count.py and its table in training_step.md."""
import json

import bench_helpers  # noqa: F401  (puts benchmarks/ on sys.path)


def test_op_count_and_its_readme_section(tmp_path):
    """op_count.py: every row counted, MoE above dense, one host sync more per encoder step;
    make_reports.py turns the JSON into training_step.md's table."""
    import make_reports
    import op_count

    out = tmp_path / "op_count.json"
    op_count.main(["--out", str(out)])
    run = json.loads(out.read_text())
    ffn, enc = run["results"]["ffn"], run["results"]["encoder"]
    assert ffn["moe"]["kernels"] > ffn["dense"]["kernels"] > 0 and ffn["moe"]["syncs"] == 0
    assert len(ffn["moe"]["ops"]) == ffn["moe"]["kernels"] and "_grouped_mm" in ffn["moe"]["ops"]
    for key in ("switch", "omni"):
        assert enc[key]["kernels"] > enc["dense"]["kernels"]
        assert enc[key]["syncs"] == enc["dense"]["syncs"] + 1 and enc[key]["sync_ops"]["nonzero"] == 1
    section = make_reports.op_count_section(str(tmp_path))
    row = f"| encoder | switch | {enc['switch']['kernels']} ({enc['switch']['kernels'] / enc['dense']['kernels']:.2f}x) |"
    assert row in section and "op_count.json" in section
