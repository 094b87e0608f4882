"""The CUDA study's scripts that run without a GPU: profile_ffn.py and the before/after table."""
import json

import bench_helpers  # noqa: F401  (puts benchmarks/ on sys.path)


def test_profile_ffn_prints_a_table_per_module(capsys):
    import profile_ffn

    profile_ffn.main(["--dims", "32x64", "--frames", "256", "--experts", "4", "--steps", "1", "--rows", "200"])
    out = capsys.readouterr().out
    for name in ("dense", "moe"):
        assert f"## {name}: wall " in out
    # the MoE step sorts its frames by expert, the dense one does not
    dense_table, moe_table = out.split("## dense:")[1].split("## moe:")
    assert "aten::sort" in moe_table and "aten::sort" not in dense_table


def _ffn_run(commit, dense_s, moe_s):
    case = dict(d=256, h=1024, frames=8192, experts=8,
                variants={"dense": {"median_s": dense_s}, "moe": {"median_s": moe_s}})
    return {"benchmark": "moe_ffn", "machine": {"commit": commit}, "cases": [case]}


def _encoder_run(commit, dense_s, switch_s, omni_s, batch=8):
    results = {k: {"median_s": v} for k, v in (("dense", dense_s), ("switch", switch_s), ("omni", omni_s))}
    return {"benchmark": "encoder_step", "machine": {"commit": commit}, "config": {"batch": batch}, "results": results}


def test_before_after_section_compares_the_same_cases(tmp_path, monkeypatch):
    import make_reports

    runs = {
        "ffn_old.json": _ffn_run("aaa1111", 0.002, 0.005),
        "ffn_new.json": _ffn_run("bbb2222", 0.004, 0.006),
        "enc_old.json": _encoder_run("aaa1111", 0.100, 0.150, 0.120, batch=64),
        "enc_new.json": _encoder_run("bbb2222", 0.050, 0.060, 0.070, batch=64),
    }
    for name, run in runs.items():
        (tmp_path / name).write_text(json.dumps(run))
    monkeypatch.setattr(make_reports, "BEFORE_AFTER_FFN", [("ffn_old.json", "ffn_new.json")])
    monkeypatch.setattr(make_reports, "BEFORE_AFTER_ENCODER", [("enc_old.json", "enc_new.json")])
    section = make_reports.before_after_section(str(tmp_path))
    assert "| step | case | dense, aaa1111 | moe, aaa1111 | dense, bbb2222 | moe, bbb2222 |" in section
    assert "| ffn | d=256 S=8192 E=8 | 2.00 ms | 2.50x | 4.00 ms | 1.50x |" in section
    assert "| encoder, batch 64 | switch | 100 ms | 1.50x | 50 ms | 1.20x |" in section
    assert "| encoder, batch 64 | omni | 100 ms | 1.20x | 50 ms | 1.40x |" in section
    # nothing to compare: no section
    monkeypatch.setattr(make_reports, "BEFORE_AFTER_FFN", [("missing.json", "ffn_new.json")])
    monkeypatch.setattr(make_reports, "BEFORE_AFTER_ENCODER", [])
    assert make_reports.before_after_section(str(tmp_path)) == ""
