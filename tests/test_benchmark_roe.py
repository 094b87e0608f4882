"""benchmarks/roe.py on the tiny quality run's Switch and Omni models, and its verdict."""
import json

import pytest

from bench_helpers import first_utts, jiwer_wer, plain_decode  # noqa: E402
import roe as roe_bench  # noqa: E402


def test_roe_benchmark(quality, tmp_path, monkeypatch):
    exp, out = quality["exp"], tmp_path / "roe"
    monkeypatch.chdir(quality["work"])  # relative paths of wav.scp and config.yaml, as in the recipe
    sets = ["test_seen", "test_noisy"]
    rc = roe_bench.main([
        "--models", f"switch={exp / 'asr_switch'}", f"omni={exp / 'asr_omni' / 'asr_model.zip'}",
        "--dump", "dump/raw", "--test_sets", *sets, "--max_utts", "2",
        "--taus", "0.5", "2", "--tune_k", "2", "--k_values", "1", "2",
        "--save_hyps", "true", "--out", str(out),
    ])
    assert rc == 0
    res = json.loads((out / "roe.json").read_text())
    md = (out / "roe.md").read_text()
    assert res["ood_sets"] == ["test_noisy"]
    for m in ("switch", "omni"):
        r = res["models"][m]
        assert r["tau"] in (0.5, 2.0)
        assert r["tau"] == min(r["tuning"], key=lambda t: (t["wer"], t["cer"], t["tau"]))["tau"]
        assert set(r["results"]) == {"1", "2"}
        assert r["results"]["1"]["flip_rate"] is None  # K = 1: RoE off
        assert r["results"]["2"]["flip_rate"] > 0  # the noise changed experts
        assert r["results"]["1"]["rtf"] > 0 and r["results"]["2"]["rtf"] > 0
        assert r["sentence"] in md and f"Chosen tau: **{r['tau']:g}**" in md
        assert r["sentence"].startswith(roe_bench.LABELS[m] + ": RoE ")
        for s in sets:
            keys, refs, wavs = first_utts(s, 2)
            hyps = plain_decode(exp / f"asr_{m}", wavs)
            assert r["hyps"]["1"][s] == dict(zip(keys, hyps)), (m, s)
            assert r["results"]["1"]["sets"][s]["wer"] == pytest.approx(jiwer_wer(refs, hyps), abs=1e-9), (m, s)
    assert "| K | test_seen | test_noisy | OOD avg | RTF |" in md
    # --report_from writes the same report again from roe.json, without decoding
    assert roe_bench.main(["--report_from", str(out / "roe.json"), "--out", str(tmp_path / "again")]) == 0
    assert (tmp_path / "again" / "roe.md").read_text() == md
    with pytest.raises(SystemExit):
        roe_bench.main(["--out", str(tmp_path / "x")])  # neither --report_from nor --models/--dump


def test_roe_beam_k1_is_plain_decoding(quality, tmp_path, monkeypatch):
    # 1 epoch: best-path CTC is still all blanks (WER 100 for any decoder), the attention decoder
    # of the beam search is not: its words make K = 1 == plain decoding a real check
    exp, out = quality["exp"], tmp_path / "roe_beam"
    monkeypatch.chdir(quality["work"])
    sets = ["test_seen", "test_noisy"]
    assert roe_bench.main([
        "--models", f"omni={exp / 'asr_omni'}", "--dump", "dump/raw", "--test_sets", *sets, "--max_utts", "1",
        "--decode", "beam", "--beam_size", "2", "--ctc_weight", "0.3", "--maxlenratio", "0.3",
        "--taus", "1", "--tune_k", "2", "--k_values", "1", "--save_hyps", "true", "--out", str(out),
    ]) == 0
    r = json.loads((out / "roe.json").read_text())["models"]["omni"]
    assert r["sentence"] == "Omni-router Conformer: no out-of-domain WER with K > 1 to compare with."
    words = 0
    for s in sets:
        keys, refs, wavs = first_utts(s, 1)
        hyps = plain_decode(exp / "asr_omni", wavs, beam=True)
        words += sum(len(h.split()) for h in hyps)
        assert r["hyps"]["1"][s] == dict(zip(keys, hyps)), s
        assert r["results"]["1"]["sets"][s]["wer"] == pytest.approx(jiwer_wer(refs, hyps), abs=1e-9), s
    assert words > 0


# --------------------------------------------------------------------------------------------
# quality_report.py on handmade experiment dirs


def _roe_result(errors_by_k, seen_wer=40.0):
    """A roe.json model entry: two OOD sets of 500 words each, ``errors_by_k[k]`` word errors per set."""
    results = {}
    for k, errs in errors_by_k.items():
        sets = {s: {"wer": 100.0 * errs / 500, "wer_errors": errs, "wer_ref": 500, "cer": 1.0}
                for s in ("test_noisy", "test_tempo")}
        sets["test_seen"] = {"wer": seen_wer, "wer_errors": 1, "wer_ref": 5, "cer": 1.0}
        results[str(k)] = {"sets": sets, "ood_avg_wer": 100.0 * errs / 500, "rtf": 0.01 * k}
    return {"tau": 0.1, "results": results}


@pytest.mark.parametrize("errors_k2, verdict", [(100, "helped"), (190, "did not clearly help"), (210, "did not help")])
def test_roe_verdict_separates_gains_from_noise(errors_k2, verdict):
    # K = 1: 2 x 200 = 400 pooled OOD word errors, noise scale 2 sqrt(400) = 40 errors
    res = _roe_result({1: 200, 2: errors_k2})
    text = roe_bench.sentence("switch", res, [1, 2], ["test_noisy", "test_tempo"])
    assert text.startswith(f"Switch Conformer: RoE {verdict} on the out-of-domain sets"), text
    assert f"{2 * errors_k2} vs 400 word errors in 1000 OOD reference words" in text
    assert "2.0x the real-time factor" in text
