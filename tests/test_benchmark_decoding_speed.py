"""The decoding-speed study: decode_rtf.py (on the tiny quality run), encoder_infer.py and
encoder_ffn_parts.py."""
import json

import pytest

from bench_helpers import REPO, TINY, jiwer_wer, plain_decode  # noqa: E402
import roe as roe_bench  # noqa: E402


def test_decode_rtf_decodes_like_espnet(quality, tmp_path, monkeypatch):
    """decode_rtf.py: every model (and the omni model with its experts forced onto the loop)
    decodes the same utterances as ESPnet's own Speech2Text, and is timed."""
    import decode_rtf

    exp = quality["exp"]
    monkeypatch.chdir(quality["work"])
    config = tmp_path / "decode.yaml"  # the beam search of plain_decode(beam=True)
    config.write_text("beam_size: 2\nctc_weight: 0.3\nmaxlenratio: 0.3\nnbest: 1\n")
    out = tmp_path / "decode_rtf.json"
    results = decode_rtf.main([
        "--model", f"dense={exp / 'asr_dense'}", "--model", f"omni={exp / 'asr_omni'}",
        "--checkpoint", "valid.loss.ave.pth", "--decode-config", str(config),
        "--data", "dump/raw/test_seen", "--max-utts", "2", "--out", str(out),
    ])
    assert list(results) == ["dense", "omni", "omni_loop"]
    assert results["omni"]["same_words_as"] == ["omni_loop"]  # the padded path decodes as the loop
    scp, text = (roe_bench.read_kaldi(f"dump/raw/test_seen/{f}") for f in ("wav.scp", "text"))
    keys = list(scp)[:2]  # decode_rtf takes wav.scp's first utterances
    for m in ("dense", "omni"):
        hyps = plain_decode(exp / f"asr_{m}", [scp[k] for k in keys], beam=True)
        refs = [" ".join(text[k].split()) for k in keys]
        assert results[m]["wer"] == pytest.approx(jiwer_wer(refs, hyps), abs=1e-9), m
        assert results[m]["rtf"] > 0
    assert json.loads(out.read_text())["results"]["omni_loop"]["wer"] == results["omni"]["wer"]
    with pytest.raises(SystemExit):
        decode_rtf.main(["--model", "omni", "--data", "dump/raw/test_seen"])


def test_encoder_infer_times_every_encoder_and_impl(tmp_path):
    """encoder_infer.py on the tiny configs: forward and greedy CTC timed for dense, the
    MoE encoders and their forced-loop twins, which compute the same function."""
    import encoder_infer

    out = tmp_path / "encoder_infer.json"
    tiny = [f"--{k}-config={v}" for k, v in TINY.items()]
    encoder_infer.main(tiny + ["--cases", "1x0.5", "2x0.3", "--warmup", "0", "--repeats", "1", "--out", str(out)])
    run = json.loads(out.read_text())
    assert [(c["batch"], c["seconds"]) for c in run["cases"]] == [(1, 0.5), (2, 0.3)]
    for case in run["cases"]:
        assert set(case["variants"]) == {"dense", "switch", "omni", "switch_loop", "omni_loop"}
        for v, r in case["variants"].items():
            assert r["forward"]["median_s"] > 0 and r["greedy"]["median_s"] > 0, v
            if v != "dense":
                assert 1.0 <= r["pad_waste"] <= 4, v  # tiny configs: 4 experts
        for v in ("switch_loop", "omni_loop"):
            assert case["variants"][v]["max_abs_diff_vs_auto"] < 1e-4, v
    assert encoder_infer.greedy_ctc(torch_log_probs([[0, 2, 2, 0, 3, 3, 1]]), lengths=[6]) == [[2, 3]]
    with pytest.raises(SystemExit):
        encoder_infer.main(["--cases", "1by5"])


def test_encoder_infer_times_a_subset_of_encoders(tmp_path):
    """encoder_infer.py --encoders dense,omni: only those (and omni's forced twin) are timed;
    a name it does not know, a list without dense, or an --exp outside the list is refused."""
    import encoder_infer

    out = tmp_path / "encoder_infer.json"
    tiny = [f"--{k}-config={v}" for k, v in TINY.items()]
    encoder_infer.main(tiny + ["--encoders", "dense,omni", "--cases", "1x0.5", "--warmup", "0", "--repeats", "1",
                               "--out", str(out)])
    (case,) = json.loads(out.read_text())["cases"]
    assert set(case["variants"]) == {"dense", "omni", "omni_loop"}
    for bad in (["--encoders", "dense,duo"], ["--encoders", "omni"], ["--encoders", "dense,omni,omni"],
                ["--encoders", "dense,omni", "--exp", "switch=exp/x"]):
        with pytest.raises(SystemExit):
            encoder_infer.main(tiny + bad)


def test_encoder_infer_runs_give_the_worst_ratio(tmp_path):
    """encoder_infer.py --runs 3: every run's medians are kept and the table gives, per variant,
    the largest of the runs' ratios to dense; --runs 0 is refused."""
    import encoder_infer
    from _report import infer_table

    out = tmp_path / "encoder_infer.json"
    tiny = [f"--{k}-config={v}" for k, v in TINY.items()]
    encoder_infer.main(tiny + ["--encoders", "dense,omni", "--impls", "", "--cases", "1x0.5", "--warmup", "0",
                               "--repeats", "1", "--runs", "3", "--out", str(out)])
    (case,) = json.loads(out.read_text())["cases"]
    assert len(case["runs"]) == 3
    medians = [r["medians_s"] for r in case["runs"]]
    assert medians[0]["omni/forward"] == case["variants"]["omni"]["forward"]["median_s"]
    worst = [max(m[f"omni/{s}"] / m[f"dense/{s}"] for m in medians) for s in ("forward", "greedy")]
    table = infer_table([case]).splitlines()
    assert "omni forward / greedy (worst of 3 runs)" in table[0]
    assert table[2].split(" | ")[4] == f"{worst[0]:.2f}x / {worst[1]:.2f}x"
    with pytest.raises(SystemExit):
        encoder_infer.main(tiny + ["--runs", "0"])


def test_encoder_infer_times_duo_policies(tmp_path):
    """encoder_infer.py --duo-config: one variant per fixed Duo policy, each with the FFN compute
    its policy implies (big 1, small h_s / h, a static pattern the mean of its letters' costs);
    an unknown policy, a bad letter, a pattern of the wrong length and a repeated policy are refused."""
    import encoder_infer
    import yaml

    duo_config = "conf/tiny/train_asr_duo_conformer.yaml"
    conf = yaml.safe_load((REPO / duo_config).read_text())["encoder_conf"]
    small = conf["duo_small_units"] / conf["linear_units"]
    slots = 2 * conf["num_blocks"]  # macaron FFN and FFN of each block
    pattern = "BSK" + "B" * (slots - 3)
    out = tmp_path / "encoder_infer.json"
    tiny = [f"--{k}-config={v}" for k, v in TINY.items()]
    args = tiny + ["--encoders", "dense,omni", "--duo-config", duo_config, "--cases", "1x0.5", "--warmup", "0",
                   "--repeats", "1", "--out", str(out)]
    encoder_infer.main(args + ["--duo-policies", f"big,small,static:{pattern}"])
    (case,) = json.loads(out.read_text())["cases"]
    variants = case["variants"]
    assert set(variants) == {"dense", "omni", "omni_loop", "duo_big", "duo_small", f"duo_static_{pattern}"}
    assert variants["duo_big"]["duo_compute"] == pytest.approx(1.0)
    assert variants["duo_small"]["duo_compute"] == pytest.approx(small)
    assert variants[f"duo_static_{pattern}"]["duo_compute"] == pytest.approx((slots - 2 + small) / slots)
    assert "pad_waste" not in variants["duo_big"] and "pad_waste" in variants["omni"]
    for bad in ("medium", "static:BX" + "B" * (slots - 2), "static:" + "B" * (slots + 1), "big,small,big"):
        with pytest.raises(SystemExit):
            encoder_infer.main(args + ["--duo-policies", bad])


def torch_log_probs(best, vocab=4):
    """Log-probabilities whose argmax is ``best`` (``[B][T]`` token ids)."""
    import torch

    return torch.nn.functional.one_hot(torch.tensor(best), vocab).float().log()


def test_encoder_ffn_parts_splits_every_encoder(tmp_path):
    """encoder_ffn_parts.py on the tiny configs: every encoder's forward, FFNs and GEMMs timed,
    the MoE routers too, rest = FFNs - GEMMs, and the budget from the dense encoder's time."""
    import encoder_ffn_parts
    from espnet_omnirouter.moe import gemm_batch, native

    out = tmp_path / "parts.json"
    tiny = [f"--{k}-config={v}" for k, v in TINY.items()]
    encoder_ffn_parts.main(tiny + ["--cases", "1x0.5", "--warmup", "0", "--repeats", "1", "--target", "1.2",
                                   "--out", str(out)])
    (case,) = json.loads(out.read_text())["cases"]
    assert set(case["encoders"]) == {"dense", "switch", "omni"}
    dense = case["encoders"]["dense"]
    assert case["budget_per_ffn_s"] == pytest.approx(0.2 * dense["encoder_s"] / dense["num_ffns"])
    for key, r in case["encoders"].items():
        assert r["encoder_s"] > 0 and r["ffn_s"] > 0 and r["gemm_s"] > 0, key
        assert r["rest_s"] == pytest.approx(r["ffn_s"] - r["gemm_s"]), key
        assert r["num_ffns"] == 4, key  # tiny configs: 2 blocks, macaron + second FFN
        if key == "dense":
            assert r["router_s"] is None and r["gemm_kind"] is None and r["slice_sizes"] == []
        else:
            assert r["router_s"] > 0
            want = "native" if native.available() else "gemm_batch" if gemm_batch.available() else "addmm per slice"
            assert r["gemm_kind"] == want
            assert len(r["slice_sizes"]) == 4 and all(sum(s) == sum(r["slice_sizes"][0]) for s in r["slice_sizes"])
    with pytest.raises(SystemExit):
        encoder_ffn_parts.main(["--target", "1.0"])
