"""benchmarks/quality_streaming.py (the streaming section of a quality report) on handmade
experiment dirs, and ``quality.sh --streaming_decode true`` end to end on a tiny streaming model."""
import json
import subprocess
import sys

import pytest

from bench_helpers import BENCH, PYTHON, fake_run, wers

sys.path.insert(0, str(BENCH))
import quality_report as qr  # noqa: E402

TINY_STREAMING = "conf/tiny/train_asr_omni_router_contextual_block_conformer.yaml"


def test_streaming_section_sets_both_decodings_side_by_side(tmp_path):
    for m, full, stream in (("dense", (10.0, [20.0, 30.0, 40.0, 50.0]), (12.0, [22.0, 33.0, 44.0, 55.0])),
                            ("omni", (9.0, [19.0, 29.0, 37.0, 39.0]), (9.9, [20.0, 30.0, 40.0, 42.0]))):
        fake_run(tmp_path, 1, m, wers(*full), epochs=[(1, 50.0, 60.0)], moe=m == "omni")
        fake_run(tmp_path, 1, m, wers(*stream), moe=False, tag="decode_fake_streaming")
    out = tmp_path / "out"
    assert qr.main(["--root", str(tmp_path), "--models", "dense", "omni", "--decode_tag", "decode_fake",
                    "--streaming_tag", "decode_fake_streaming", "--out", str(out), "--name", "q"]) == 0
    res = json.loads((out / "q.json").read_text())
    st = res["streaming"]
    assert st["decode_tag"] == "decode_fake_streaming" and st["models"] == ["dense", "omni"]
    d = st["change"]["dense"]["wer"]
    assert d["test_seen"] == {"full": 10.0, "streaming": 12.0, "change": pytest.approx(20.0)}
    assert d["ood_avg"]["full"] == 35.0 and d["ood_avg"]["streaming"] == pytest.approx(38.5)
    assert d["ood_avg"]["change"] == pytest.approx(10.0)
    assert st["change"]["omni"]["wer"]["test_real"]["change"] == pytest.approx(100 * 3 / 39)
    # Omni vs dense in streaming decoding, from the streaming scores
    assert st["relative"]["dense"]["omni"]["wer"]["test_seen"] == pytest.approx(100 * (9.9 - 12) / 12)
    v = "\n".join(res["verdict"])
    assert ("Streaming vs full-utterance decoding, Dense Conformer: test_seen WER 12.00% vs 10.00% (+20.0% "
            "relative); out-of-domain average WER 38.50% vs 35.00% (+10.0% relative)") in v
    assert "In streaming decoding, Omni-router vs dense on test_seen WER: -17.5% relative (better; 9.90% vs 12.00%)" in v
    md = (out / "q.md").read_text()
    assert "## Streaming vs full-utterance decoding (`decode_fake_streaming`)" in md
    assert "| Dense Conformer | streaming | 12.00 | 22.00 | 33.00 | 44.00 | 55.00 | 38.50 |" in md
    assert "| Dense Conformer | change | +20.0% | +10.0% | +10.0% | +10.0% | +10.0% | +10.0% |" in md


def test_streaming_section_refuses_other_test_sets(tmp_path, capsys):
    fake_run(tmp_path, 1, "omni", wers(9.0, [19.0, 29.0, 37.0, 39.0]), epochs=[(1, 50.0, 60.0)])
    fake_run(tmp_path, 1, "omni", {"test_seen": 10.0}, tag="decode_fake_streaming")
    with pytest.raises(SystemExit):
        qr.main(["--root", str(tmp_path), "--models", "omni", "--decode_tag", "decode_fake",
                 "--streaming_tag", "decode_fake_streaming", "--out", str(tmp_path / "out")])
    assert "streaming decode dirs 'decode_fake_streaming' score the sets ['test_seen']" in capsys.readouterr().err
    assert not (tmp_path / "out" / "quality.md").exists()


def test_quality_sh_refuses_streaming_decoding_of_a_full_utterance_encoder(tmp_path):
    p = subprocess.run(["bash", str(BENCH / "quality.sh"), "--python", PYTHON, "--workdir", str(tmp_path / "w"),
                        "--out", str(tmp_path / "o"), "--streaming_decode", "true",
                        "--configs", f"s={TINY_STREAMING} c=conf/tiny/train_asr_conformer.yaml"],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 2, p.stderr
    assert ("--streaming_decode true: conf/tiny/train_asr_conformer.yaml has encoder 'conformer', not a streaming "
            "(contextual_block_*) encoder") in p.stderr
    assert not (tmp_path / "w" / "exp").exists()
    p = subprocess.run(["bash", str(BENCH / "quality.sh"), "--streaming_decode", "yes"],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and "--streaming_decode must be true or false, got 'yes'" in p.stderr


def test_quality_sh_adds_streaming_decoding_to_a_finished_run(tmp_path):
    """A finished run (quality.done) given --streaming_decode true later is decoded chunk by chunk
    only (no training, no full decoding again); its streaming scores are kept with the run's report
    inputs and the report sets both decodings side by side."""
    work, out = tmp_path / "work", tmp_path / "out"
    base = ["bash", str(BENCH / "quality.sh"), "--workdir", str(work), "--out", str(out), "--python", PYTHON,
            "--configs", f"omni={TINY_STREAMING}", "--inference_config", "conf/tiny/decode_asr.yaml",
            "--inference_args", "--maxlenratio 0.3", "--asr_args", "--max_epoch 1 --num_att_plot 0",
            "--local_data_opts", "--train_hours 0.01 --dev_utts 4 --test_utts 2",
            "--test_sets", "test_seen test_noisy", "--ood_sets", "test_noisy",
            "--run_opts", "--nj 2 --inference_nj 1 --analysis_max_utts 2"]
    proc = subprocess.run(base, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-6000:]
    exp = work / "exp" / "seed1" / "asr_omni"
    assert (exp / "quality.done").is_file() and not (exp / "quality.streaming.done").exists()
    assert "## Streaming" not in (out / "quality.md").read_text()

    proc = subprocess.run(base + ["--stage", "2", "--streaming_decode", "true"], stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-6000:]
    assert "Stage 5" not in proc.stdout and "Stage 8" not in proc.stdout
    tag = "decode_asr_maxlenratio0.3_streaming"
    log = (exp / tag / "test_seen" / "logdir" / "asr_inference.1.log").read_text()
    assert log.splitlines()[0].split()[2:5] == ["-m", "espnet_omnirouter.bin.asr_inference_streaming", "--batch_size"]
    assert (exp / "quality.streaming.done").is_file()
    kept = out / "quality_runs" / "seed1" / "asr_omni"
    assert (kept / "quality.streaming.done").is_file()
    res = json.loads((out / "quality.json").read_text())
    for s in ("test_seen", "test_noisy"):
        streamed = json.loads((kept / tag / s / "score_wer" / "summary.json").read_text())["Err"]
        full = json.loads((kept / tag.replace("_streaming", "") / s / "score_wer" / "summary.json").read_text())["Err"]
        row = res["streaming"]["change"]["omni"]["wer"][s]
        assert row["streaming"] == streamed and row["full"] == full
        # the recipe's streaming decoder wrote its hypotheses chunk by chunk, one utterance per call
        assert (exp / tag / s / "text").read_text().count("\n") == 2
    assert f"## Streaming vs full-utterance decoding (`{tag}`)" in (out / "quality.md").read_text()
