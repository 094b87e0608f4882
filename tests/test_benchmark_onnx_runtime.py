"""benchmarks/onnx_runtime.py on tiny encoders and the session's tiny trained model."""
import json
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
import onnx_runtime  # noqa: E402


def test_onnx_runtime_benchmark(tiny_omni, tmp_path):
    data, exp = tiny_omni
    out = tmp_path / "onnx_runtime.json"
    onnx_runtime.main([
        "--dense-config", "conf/tiny/train_asr_conformer.yaml",
        "--omni-config", "conf/tiny/train_asr_omni_router_conformer.yaml",
        "--feat-dim", "40", "--runs", "2", "--repeats", "1", "--warmup", "0", "--threads", "1",
        "--model", exp, "--test_set", data, "--decode_config", os.path.join(ROOT, "conf/tiny/decode_asr.yaml"),
        "--out", str(out),
    ])
    payload = json.loads(out.read_text())
    assert set(payload["encoder_speed"]) == set(onnx_runtime.CASES)
    for case in payload["encoder_speed"].values():
        assert len(case["runs"]) == 2
        for run in case["runs"]:
            ms = run["ms"]
            assert run["omni_vs_dense_ort"] == pytest.approx(ms["omni_ort"] / ms["dense_ort"])
            assert run["ort_vs_torch_omni"] == pytest.approx(ms["omni_ort"] / ms["omni_torch"])
        assert case["worst"]["omni_vs_dense_ort"] == max(r["omni_vs_dense_ort"] for r in case["runs"])
    decoding = payload["decoding"]
    assert decoding["utterances"] == 8
    assert decoding["identical_hypotheses"] == 8 and decoding["differing"] == {}
    assert decoding["wer"]["ort"] == decoding["wer"]["torch"]
    assert all(v > 0 for v in decoding["rtf"].values())
    report = (tmp_path / "onnx_runtime.md").read_text()
    assert "python benchmarks/onnx_runtime.py --dense-config conf/tiny/train_asr_conformer.yaml" in report
    assert "Identical hypotheses: 8 of 8." in report
