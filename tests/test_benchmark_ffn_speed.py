"""The FFN-speed study: moe_ffn.py, the expert-matmul floor, ffn_infer_rows.py and its table."""
import json

import pytest

import bench_helpers  # noqa: F401  (puts benchmarks/ on sys.path)


def test_moe_ffn_runs_every_default_variant_on_the_same_routing(tmp_path):
    """moe_ffn.py on a tiny grid: every default variant timed; the peer strategies compute
    our MoE's function (gshard where it kept the frame), so the ratios compare like with like."""
    import moe_ffn
    import torch

    out = tmp_path / "moe_ffn.json"
    moe_ffn.main(["--experts", "4", "--frames", "512", "--dims", "32x64", "--warmup", "0", "--repeats", "1",
                  "--threads", str(torch.get_num_threads()), "--page-faults", "--out", str(out)])
    (case,) = json.loads(out.read_text())["cases"]
    assert set(case["variants"]) == set(moe_ffn.DEFAULT_VARIANTS)
    for v, r in case["variants"].items():
        assert r["median_s"] > 0 and r["peak_bytes"] > 0 and r["minor_faults"] >= 0, v
    for v in ("loop", "gshard"):
        assert case["variants"][v]["max_abs_diff_vs_moe"] < 1e-5, v


def test_expert_matmuls_are_the_expert_matmuls_of_the_routing():
    """The ``matmuls`` lower bound computes (x_e @ w1[e]) @ w2[e] on consecutive slices of the
    routing's sizes, with the same result and gradients on the per-slice and grouped_mm paths."""
    import moe_ffn
    import torch
    from torch import nn

    torch.manual_seed(0)
    d, h, num_experts, frames = 16, 32, 4, 64
    ref = moe_ffn.build("moe", d, h, num_experts, nn.SiLU, None)
    x = torch.randn(1, frames, d)
    sizes = moe_ffn.routing_sizes(ref, x)
    assert sizes.sum().item() == frames and (sizes > 0).sum().item() > 1
    want = torch.cat([x_e @ ref.experts.w1[e] @ ref.experts.w2[e]
                      for e, x_e in enumerate(x[0].split(sizes.tolist()))]).detach()
    grads = []
    for impl in ("loop", "grouped_mm"):  # build() follows ours' path decision
        ref.experts.impl = impl
        matmuls = moe_ffn.build("matmuls", d, h, num_experts, nn.SiLU, ref, x)
        assert matmuls.grouped == (impl == "grouped_mm")
        xi = x.clone().requires_grad_()
        y = matmuls(xi)
        y.backward(torch.arange(y.numel(), dtype=y.dtype).view(y.shape) / y.numel())
        torch.testing.assert_close(y[0], want)
        grads.append((xi.grad, matmuls.w1.grad, matmuls.w2.grad))
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match="63 frames, routing sizes sum to 64"):
        matmuls(x[:, :63])


def test_ffn_infer_rows_times_every_path_and_its_readme_table(tmp_path):
    """ffn_infer_rows.py on a small FFN: dense, auto and each forced path timed per frame count,
    every path's output equal to the loop's, the automatic choice recorded (native up to
    NATIVE_MAX_ROWS, the loop above), every frame counted once; make_reports renders the table;
    bad options are errors."""
    import ffn_infer_rows
    import make_reports
    from espnet_omnirouter.moe.experts import NATIVE_MAX_ROWS

    out = tmp_path / "ffn_infer_rows.json"
    frames = [40, NATIVE_MAX_ROWS + 1]
    ffn_infer_rows.main(["--frames", *map(str, frames), "--dims", "16x32", "--experts", "3", "--impls", "native,loop",
                         "--warmup", "0", "--repeats", "1", "--out", str(out)])
    run = json.loads(out.read_text())
    assert [c["frames"] for c in run["cases"]] == frames
    assert [c["auto_path"] for c in run["cases"]] == ["native", "loop"]
    for case in run["cases"]:
        assert set(case["variants"]) == {"dense", "auto", "native", "loop"}
        assert all(v["median_s"] > 0 for v in case["variants"].values())
        assert all(case["variants"][v]["max_abs_diff_vs_loop"] < 1e-4 for v in ("auto", "native", "loop"))
        assert sum(case["expert_frames"]) == case["frames"] and len(case["expert_frames"]) == 3
    section = make_reports.generate(str(tmp_path), "ffn_speed.md")
    assert "One MoE FFN's inference paths by frame count" in section
    assert f"| {NATIVE_MAX_ROWS + 1} |" in section and "| loop |" in section
    for bad in (["--impls", "native"], ["--impls", "loop,fast"], ["--dims", "16by32"]):
        with pytest.raises(SystemExit):
            ffn_infer_rows.main(bad)
