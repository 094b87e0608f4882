"""benchmarks/quality.sh + quality_report.py (dense vs Switch vs Omni-router) and benchmarks/roe.py.

One shared tiny quality run (module fixture): quality.sh with the tiny configs, 1 epoch on a tiny
synth_en corpus, three test sets, the three models run side by side (``--jobs 3``), in a work dir
made of links to the recipe under tmp.  The RoE test reuses its Switch and Omni models.  The
report generator is also tested on handmade experiment dirs (arithmetic, seeds, resumed logs).
"""

import json
import math
import os
import statistics
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "benchmarks"
sys.path.insert(0, str(BENCH))

import quality_report as qr  # noqa: E402
import roe as roe_bench  # noqa: E402

PYTHON = sys.executable
TINY = {"dense": "conf/tiny/train_asr_conformer.yaml", "switch": "conf/tiny/train_asr_switch_conformer.yaml",
        "omni": "conf/tiny/train_asr_omni_router_conformer.yaml"}
TEST_SETS = ["test_seen", "test_noisy", "test_tempo"]
DECODE_TAG = "decode_asr_maxlenratio0.3"


# --------------------------------------------------------------------------------------------
# the tiny end-to-end run


@pytest.fixture(scope="module")
def quality(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("quality")
    work, out = tmp / "work", tmp / "results"
    cmd = [
        "bash", str(BENCH / "quality.sh"),
        "--workdir", str(work), "--out", str(out), "--python", PYTHON,
        "--configs", " ".join(f"{k}={v}" for k, v in TINY.items()),
        "--inference_config", "conf/tiny/decode_asr.yaml",
        "--asr_args", "--max_epoch 1 --num_att_plot 0",
        # an untrained model babbles until the maximum length (see tests/test_recipe.py)
        "--inference_args", "--maxlenratio 0.3",
        "--local_data_opts", "--train_hours 0.01 --dev_utts 6 --test_utts 3",
        "--test_sets", " ".join(TEST_SETS),
        "--run_opts", "--nj 2 --inference_nj 1 --analysis_max_utts 3",
        "--jobs", "3",
    ]
    t0 = time.time()
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=900)
    print(f"\nquality.sh (tiny) took {time.time() - t0:.1f} s")
    assert proc.returncode == 0, proc.stdout[-8000:]
    return {"work": work, "out": out, "exp": work / "exp" / "seed1", "stdout": proc.stdout}


def score(exp: Path, s: str, unit: str) -> float:
    with open(exp / DECODE_TAG / s / f"score_{unit}" / "summary.json") as f:
        return json.load(f)["Err"]


def test_quality_outputs(quality):
    out = quality["out"]
    for f in ("quality.md", "quality.json", "quality_loss.png"):
        assert (out / f).is_file() and (out / f).stat().st_size > 0, f
    assert (out / "quality_loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (out / "quality.md").read_text()
    for heading in ("## Verdict", "## WER (%)", "## CER (%)", "## Relative change", "## Training",
                    "## Parameters", "## Routing analysis"):
        assert heading in md, heading
    assert "Omni-router vs Switch on out-of-domain average WER: " in md
    # the work dir is a recipe copy made of links; the repository's recipe is untouched
    assert (quality["work"] / "run.sh").is_symlink()
    assert "Step 3: report" in quality["stdout"]
    # acoustic models compared without the recipe's LM (run.sh would train one by default)
    assert not list((quality["work"] / "exp").rglob("lm_*"))
    assert "language model" not in quality["stdout"]


def test_quality_keeps_finished_runs_and_restores_them(quality, tmp_path):
    """Every finished run's report inputs go to <out>/quality_runs/ (no checkpoints); a call with a fresh
    work dir (a fresh clone: exp/ gone) restores them, trains nothing and writes the same numbers."""
    kept = quality["out"] / "quality_runs" / "seed1"
    for m in TINY:
        d = kept / f"asr_{m}"
        for f in ("quality.done", "train.log", "config.yaml", "params.json", "RESULTS.md"):
            assert (d / f).is_file(), (m, f)
        for s in TEST_SETS:
            for unit in ("wer", "cer"):
                assert (d / DECODE_TAG / s / f"score_{unit}" / "summary.json").is_file()
        assert not list(d.rglob("*.pth")) and not list(d.rglob("*.zip"))
    shutil.copytree(quality["out"] / "quality_runs", tmp_path / "out" / "again_runs")
    cmd = ["bash", str(BENCH / "quality.sh"), "--workdir", str(tmp_path / "work"), "--out", str(tmp_path / "out"),
           "--python", PYTHON, "--configs", " ".join(f"{k}={v}" for k, v in TINY.items()),
           "--inference_config", "conf/tiny/decode_asr.yaml", "--inference_args", "--maxlenratio 0.3",
           "--test_sets", " ".join(TEST_SETS), "--stage", "2", "--report_name", "again"]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:]
    assert proc.stdout.count("restored from") == len(TINY) and "Stage 5" not in proc.stdout
    again = json.loads((tmp_path / "out" / "again.json").read_text())
    first = json.loads((quality["out"] / "quality.json").read_text())
    assert again["summary"]["omni"]["wer"] == first["summary"]["omni"]["wer"]
    assert again["runs"]["1"]["switch"]["curves"] == first["runs"]["1"]["switch"]["curves"]
    assert again["runs"]["1"]["omni"]["params"] == first["runs"]["1"]["omni"]["params"]
    assert (tmp_path / "out" / "again_loss.png").is_file()


def test_quality_json_equals_score_files(quality):
    res = json.loads((quality["out"] / "quality.json").read_text())
    exp = quality["exp"]
    assert res["models"] == ["dense", "switch", "omni"] and res["seeds"] == [1]
    assert res["sets"] == TEST_SETS
    assert res["ood_sets"] == ["test_noisy", "test_tempo"]  # the decoded OOD sets
    for m in res["models"]:
        run = res["runs"]["1"][m]
        assert run["decode_tag"] == DECODE_TAG
        for s in TEST_SETS:
            for unit in ("wer", "cer"):
                assert run[unit][s] == score(exp / f"asr_{m}", s, unit), (m, s, unit)
                assert res["summary"][m][unit][s]["mean"] == run[unit][s]
        for unit in ("wer", "cer"):
            ood = [score(exp / f"asr_{m}", s, unit) for s in ("test_noisy", "test_tempo")]
            assert run[f"{unit}_ood_avg"] == pytest.approx(sum(ood) / 2)
    # relative change of Omni vs Switch on the OOD average, and the sentence that states it
    o, s = res["summary"]["omni"]["wer_ood_avg"]["mean"], res["summary"]["switch"]["wer_ood_avg"]["mean"]
    rel = res["relative"]["switch"]["omni"]["wer"]["ood_avg"]
    if s:
        assert rel == pytest.approx(100 * (o - s) / s)
        word = "worse" if rel > 0 else "better" if rel < 0 else "same"
        assert any(f"Omni-router vs Switch on out-of-domain average WER: {rel:+.1f}% relative ({word}" in v
                   for v in res["verdict"])


def test_quality_training_params_and_routing(quality):
    res = json.loads((quality["out"] / "quality.json").read_text())
    runs = res["runs"]["1"]
    for m in res["models"]:
        r = runs[m]
        assert r["curves"]["epoch"] == [1]
        assert r["final"]["epochs"] == 1
        for k in ("train_loss", "valid_loss", "train_loss_asr", "valid_loss_asr"):
            assert r["final"][k] is not None and math.isfinite(r["final"][k]), (m, k)
        assert r["train_seconds"] > 0 and r["log_span_seconds"] > 0
        # the final values are those of train.log's epoch line
        line = next(x for x in (quality["exp"] / f"asr_{m}" / "train.log").read_text().splitlines()
                    if "1epoch results:" in x)
        assert f"loss={r['final']['train_loss']:.3f}" in line.split("[valid]")[0]
    p = {m: runs[m]["params"] for m in res["models"]}
    assert p["dense"]["active_per_frame"] == p["dense"]["total"] and p["dense"]["num_moe_ffns"] == 0
    for m in ("switch", "omni"):
        # conf/tiny: 2 blocks x (macaron + FFN) = 4 MoE FFNs of 4 experts, top-1
        assert (p[m]["num_moe_ffns"], p[m]["num_experts"], p[m]["top_k"]) == (4, 4, 1)
        # one expert has the dense FFN's shape: the active model is the dense one plus the routers
        assert p[m]["active_per_frame"] == p["dense"]["total"] + p[m]["router_params"]
        assert p[m]["total"] == p[m]["active_per_frame"] + 3 * p[m]["expert_params"] // 4
    assert (p["switch"]["num_routers"], p["omni"]["num_routers"]) == (4, 1)
    assert p["switch"]["router_params"] == 4 * p["omni"]["router_params"]
    for m in ("switch", "omni"):
        with open(quality["exp"] / f"asr_{m}" / "routing_analysis" / "summary.json") as f:
            head = json.load(f)["headline"]
        assert runs[m]["routing"]["headline"] == head
    assert runs["dense"]["routing"] is None
    md = (quality["out"] / "quality.md").read_text()
    routing = md.split("## Routing analysis")[1]
    assert "| Switch Conformer | Omni-router Conformer |" in routing.splitlines()[2]


# --------------------------------------------------------------------------------------------
# RoE on the tiny Switch and Omni models


def plain_decode(exp: Path, wavs, beam=False):
    """ESPnet's own Speech2Text (no RoE code), run from the recipe dir: best-path CTC, or its beam
    search with the settings the RoE run below uses."""
    import numpy as np
    import soundfile
    import torch
    from espnet2.bin.asr_inference import Speech2Text

    opts = dict(beam_size=2, ctc_weight=0.3, maxlenratio=0.3, nbest=1) if beam else {}
    s2t = Speech2Text(asr_train_config=str(exp / "config.yaml"), asr_model_file=str(exp / "valid.loss.ave.pth"),
                      **opts)
    hyps = []
    for wav in wavs:
        x, _ = soundfile.read(wav, dtype="float32")
        x = np.ascontiguousarray(x)
        if beam:
            hyps.append(s2t(x)[0][0])
            continue
        with torch.no_grad():
            enc, _ = s2t.asr_model.encode(torch.from_numpy(x)[None], torch.tensor([len(x)]))
            best = s2t.asr_model.ctc.log_softmax(enc)[0].argmax(-1).tolist()
        ids = [t for i, t in enumerate(best) if t != 0 and (i == 0 or t != best[i - 1])]
        hyps.append(s2t.tokenizer.tokens2text(s2t.converter.ids2tokens(ids)))
    return hyps


def first_utts(s, n):
    """ids, references and wav paths of the first n utterances (by id) of dump/raw/<s>."""
    text, scp = roe_bench.read_kaldi(f"dump/raw/{s}/text"), roe_bench.read_kaldi(f"dump/raw/{s}/wav.scp")
    keys = sorted(text)[:n]
    return keys, [" ".join(text[k].split()) for k in keys], [scp[k] for k in keys]


def jiwer_wer(refs, hyps):
    import jiwer

    o = jiwer.process_words(refs, hyps)
    return 100.0 * (o.substitutions + o.deletions + o.insertions) / sum(len(x.split()) for x in refs)


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


@pytest.mark.parametrize("encoders, name", [
    (["e_branchformer", "omni_router_e_branchformer"], "E-Branchformer"),
    (["contextual_block_conformer", "omni_router_contextual_block_conformer"], "contextual-block Conformer"),
    (["conformer", "switch_conformer", None], "Conformer"),
    (["transformer", "omni_router_transformer"], "Transformer"),
    (["conformer", "e_branchformer"], "encoder"),
])
def test_report_labels_name_the_encoder_family(encoders, name):
    runs = [{"encoder": e} for e in encoders]
    assert qr.model_labels(["dense", "omni"], runs) == {"dense": f"Dense {name}", "omni": f"Omni-router {name}"}

EPOCH_LINE = ("[vm] 2026-11-27 10:{mm}:00,000 (trainer:394) INFO: {ep}epoch results: [train] iter_time=0.012, "
              "loss_ctc=133.7, loss_att=75.6, acc=0.014, loss={tl}, {asr}train_time=1.087, time={tt}, "
              "total_count=5, [valid] loss_ctc=113.7, acc={acc}, loss={vl}, {vasr}time=2.5 seconds, total_count=2, "
              "[att_plot] time=0.5 seconds, total_count=0")


def fake_run(root: Path, seed: int, model: str, wer: dict, cer: dict = None, epochs=(), moe=False,
             log_name="train.log", counts=None, tag="decode_fake"):
    """An experiment dir as the recipe leaves it: score summaries (in decode dir ``tag``), train.log,
    params, routing."""
    exp = root / f"seed{seed}" / f"asr_{model}"
    for s, w in wer.items():
        for unit, v in (("wer", w), ("cer", (cer or {}).get(s, w / 2))):
            d = exp / tag / s / f"score_{unit}"
            d.mkdir(parents=True, exist_ok=True)
            n_ref, n_err = (counts or {}).get(s, (1000, None))
            summary = {"Snt": 10, "Wrd": n_ref, "Err": v,
                       "counts": {"sub": n_err if n_err is not None else round(v * n_ref / 100), "del": 0,
                                  "ins": 0, "corr": 0, "snt_err": 0}}
            (d / "summary.json").write_text(json.dumps(summary))
    lines = []
    for i, (ep, tl, vl) in enumerate(epochs):
        asr = f"loss_asr={tl - 0.1}, moe_lb_loss=1.0, " if moe else ""
        vasr = f"loss_asr={vl - 0.1}, " if moe else ""
        lines.append(EPOCH_LINE.format(mm=10 + i, ep=ep, tl=tl, vl=vl, acc=0.1 * ep, asr=asr, vasr=vasr,
                                       tt="1 minute and 2.5 seconds"))
    exp.mkdir(parents=True, exist_ok=True)
    if lines:
        (exp / log_name).write_text("# header\n" + "\n".join(lines) + "\n")
    params = {"total": 1000 if not moe else 4000, "active_per_frame": 1000 if not moe else 1100,
              "encoder_total": 500, "encoder_active_per_frame": 500, "num_moe_ffns": 4 if moe else 0,
              "num_experts": 8 if moe else None, "top_k": 1 if moe else None, "num_routers": 1 if moe else 0,
              "router_params": 100 if moe else 0, "expert_params": 3000 if moe else 0}
    (exp / "params.json").write_text(json.dumps(params))
    if moe:
        (exp / "routing_analysis").mkdir()
        (exp / "routing_analysis" / "summary.json").write_text(json.dumps(
            {"headline": {"num_routers": 12 if model == "switch" else 1, "cramers_v_mean": 0.1 * seed}}))
    return exp


OOD = ["test_unseen_voice", "test_noisy", "test_tempo", "test_real"]


def wers(seen, ood):
    return {"test_seen": seen, **dict(zip(OOD, ood))}


def test_parse_epoch_line_and_timespan():
    line = EPOCH_LINE.format(mm=10, ep=3, tl=93.1, vl=102.4, acc=0.5, asr="loss_asr=93.0, ", vasr="",
                             tt="1 hour, 2 minutes and 3.5 seconds")
    ep, phases = qr.parse_epoch_line(line)
    assert ep == 3
    assert phases["train"]["loss"] == 93.1 and phases["train"]["loss_asr"] == 93.0
    assert phases["train"]["time"] == pytest.approx(3723.5) and phases["train"]["train_time"] == 1.087
    assert phases["valid"]["loss"] == 102.4 and phases["valid"]["time"] == 2.5
    assert phases["att_plot"]["time"] == 0.5
    assert qr.parse_epoch_line("1epoch started") is None
    assert qr.parse_timespan("523 milliseconds") == pytest.approx(0.523)
    assert qr.parse_timespan("2 days and 1 second") == 2 * 86400 + 1


def test_relative_change_ood_average_and_verdict(tmp_path):
    fake_run(tmp_path, 1, "dense", wers(10.0, [20.0, 30.0, 40.0, 50.0]), epochs=[(1, 50.0, 60.0)])
    fake_run(tmp_path, 1, "switch", wers(8.0, [18.0, 28.0, 36.0, 38.0]), epochs=[(1, 45.0, 55.0)], moe=True)
    fake_run(tmp_path, 1, "omni", wers(9.0, [19.0, 29.0, 37.0, 39.0]), epochs=[(1, 44.0, 54.0)], moe=True)
    res = qr.collect(str(tmp_path), ["dense", "switch", "omni"], [1], compute_params=False)
    assert res["sets"] == ["test_seen"] + OOD and res["in_domain_sets"] == ["test_seen"]
    s = res["summary"]
    assert s["dense"]["wer_ood_avg"]["mean"] == 35.0
    assert s["switch"]["wer_ood_avg"]["mean"] == 30.0
    assert s["omni"]["wer_ood_avg"]["mean"] == 31.0
    rel = res["relative"]
    assert rel["dense"]["switch"]["wer"]["ood_avg"] == pytest.approx(100 * (30 - 35) / 35)
    assert rel["dense"]["omni"]["wer"]["test_seen"] == pytest.approx(-10.0)
    assert rel["switch"]["omni"]["wer"]["ood_avg"] == pytest.approx(100 / 30)
    assert rel["switch"]["omni"]["wer"]["test_real"] == pytest.approx(100 / 38)
    assert "switch" not in rel["switch"] and "dense" not in rel["dense"]
    # pooled: 1000 words per set, errors = WER * 10
    assert s["omni"]["wer_ood_pooled"]["mean"] == pytest.approx((190 + 290 + 370 + 390) / 40)
    v = "\n".join(res["verdict"])
    assert "Omni-router vs Switch on out-of-domain average WER: +3.3% relative (worse; 31.00% vs 30.00%)" in v
    assert "Omni-router vs dense on out-of-domain average WER: -11.4% relative (better" in v
    assert "Lowest out-of-domain average WER (mean over " in v and "**Switch Conformer** (30.00%)" in v
    assert "Lowest in-domain WER (test_seen): **Switch Conformer** (8.00%)" in v
    assert "Omni-router does **not** beat Switch" in v
    assert "one seed, so no spread estimate" in v
    # the final values and the training time come from train.log
    r = res["runs"]["1"]["switch"]
    assert r["final"]["train_loss"] == 45.0 and r["final"]["train_loss_asr"] == pytest.approx(44.9)
    assert r["final"]["valid_loss_asr"] == pytest.approx(54.9) and r["final"]["valid_acc"] == pytest.approx(0.1)
    assert r["train_seconds"] == pytest.approx(62.5 + 2.5 + 0.5)
    assert res["runs"]["1"]["dense"]["final"]["train_loss_asr"] == 50.0  # no loss_asr: ESPnet's loss
    paths = qr.write_report(res, str(tmp_path / "out"))
    md = Path(paths["md"]).read_text()
    assert "| Omni-router Conformer | Switch Conformer | WER | +12.50% |" not in md  # no mix-up of columns
    assert "| Omni-router Conformer | Switch Conformer | WER | +12.5% | +5.6% | +3.6% | +2.8% | +2.6% | +3.3% |" in md
    assert "| Dense Conformer | 10.0 | 20.0 | 30.0 | 40.0 | 50.0 | 35.00 |" in md
    assert "| cramers_v_mean |" not in md and "`cramers_v_mean`" in md
    assert json.loads(Path(paths["json"]).read_text())["relative"] == json.loads(json.dumps(rel))


def test_reports_name_paths_relative_to_the_checkout(tmp_path):
    root = tmp_path / "clone" / "egs2" / "synth_en" / "asr1" / "exp"
    for m in ("dense", "omni"):
        fake_run(root, 1, m, {"test_seen": 10.0, "test_noisy": 30.0})
    res = qr.collect(str(root), ["dense", "omni"], [1], compute_params=False)
    res["command"] = f"benchmarks/quality.sh --out {tmp_path}/clone/benchmarks/results"
    paths = qr.write_report(res, str(tmp_path / "out"))
    md, js = Path(paths["md"]).read_text(), Path(paths["json"]).read_text()
    assert str(tmp_path) not in md and str(tmp_path) not in js
    assert "experiments: `egs2/synth_en/asr1/exp/seed<S>/asr_<model>`" in md
    assert "--out benchmarks/results" in md


def test_one_seed_report_judged_by_an_earlier_reports_seed_spread(tmp_path):
    """--spread_from: a one-seed report's differences are judged against the seed standard
    deviations of an earlier report of the same models (named in the sentence and the header);
    an earlier report with one seed, or without the models, is refused."""
    earlier = tmp_path / "earlier"
    for seed, shift in ((0, 0.0), (1, 2.0)):  # OOD avg std: switch 0, omni 1.41; train loss std 1.41
        fake_run(earlier, seed, "switch", wers(8.0, [20.0] * 4), epochs=[(1, 45.0 + shift, 55.0)], moe=True)
        fake_run(earlier, seed, "omni", wers(8.0 + shift, [19.0 + shift] * 4), epochs=[(1, 44.0, 54.0)], moe=True)
    paths = qr.write_report(qr.collect(str(earlier), ["switch", "omni"], [0, 1], compute_params=False),
                            str(tmp_path / "out"), "earlier")
    longer = tmp_path / "longer"
    fake_run(longer, 0, "switch", wers(7.0, [18.0] * 4), epochs=[(1, 40.0, 50.0)], moe=True)
    fake_run(longer, 0, "omni", wers(7.5, [17.0] * 4), epochs=[(1, 39.0, 49.0)], moe=True)
    alone = "\n".join(qr.collect(str(longer), ["switch", "omni"], [0], compute_params=False)["verdict"])
    assert "one seed, so no spread estimate" in alone
    out = tmp_path / "out2"
    assert qr.main(["--root", str(longer), "--models", "switch", "omni", "--seeds", "0", "--name", "longer",
                    "--spread_from", paths["json"], "--out", str(out)]) == 0
    res = json.loads((out / "longer.json").read_text())
    v = "\n".join(res["verdict"])
    assert "one seed" not in v
    assert ("Omni-router vs Switch on out-of-domain average WER: -5.6% relative (better; 17.00% vs 18.00%); the "
            "difference (1.00 points) is not larger than the larger seed standard deviation (1.41) over 2 seeds "
            "of `earlier.json`") in v
    assert ("Omni-router vs Switch on test_seen WER: +7.1% relative (worse; 7.50% vs 7.00%); the difference "
            "(0.50 points) is not larger than the larger seed standard deviation (1.41)") in v
    assert ("Final training ASR loss, Omni-router vs Switch: 38.90 vs 39.90 (lower; the difference (1.00) is not "
            "larger than the larger seed standard deviation (1.41) over 2 seeds of `earlier.json`)") in v
    assert res["spread_from"]["seeds"] == [0, 1] and set(res["spread_from"]["summary"]) == {"switch", "omni"}
    assert f"seed spread for the verdict: from `{paths['json']}` (seeds 0, 1)" in (out / "longer.md").read_text()
    one = qr.write_report(qr.collect(str(longer), ["switch", "omni"], [0], compute_params=False),
                          str(tmp_path / "out3"), "one")
    for bad, models in ((one["json"], ["switch", "omni"]), (paths["json"], ["dense", "switch", "omni"])):
        with pytest.raises(SystemExit):  # one seed; no dense runs
            qr.main(["--root", str(longer), "--models", *models, "--seeds", "0",
                     "--spread_from", bad, "--out", str(tmp_path / "out4")])


def test_omni_better_than_switch_is_stated(tmp_path):
    fake_run(tmp_path, 1, "switch", wers(8.0, [20.0, 20.0, 20.0, 20.0]), moe=True)
    fake_run(tmp_path, 1, "omni", wers(8.0, [19.0, 19.0, 19.0, 19.0]), moe=True)
    res = qr.collect(str(tmp_path), ["switch", "omni"], [1], compute_params=False)
    v = "\n".join(res["verdict"])
    assert "Omni-router vs Switch on out-of-domain average WER: -5.0% relative (better" in v
    assert "Omni-router beats Switch on the out-of-domain average WER" in v
    assert "Omni-router vs Switch on test_seen WER: +0.0% relative (same" in v
    assert "dense" not in res["relative"]


def test_seeds_mean_and_std(tmp_path):
    table = {1: (30.0, 28.0), 2: (32.0, 29.0), 3: (34.0, 33.0)}  # seed: (switch OOD, omni OOD)
    for seed, (sw, om) in table.items():
        fake_run(tmp_path, seed, "switch", wers(10.0 + seed, [sw] * 4), moe=True, epochs=[(1, 50.0 + seed, 60.0)])
        fake_run(tmp_path, seed, "omni", wers(11.0, [om] * 4), moe=True, epochs=[(1, 40.0 + seed, 60.0)])
    res = qr.collect(str(tmp_path), ["switch", "omni"], [1, 2, 3], compute_params=False)
    s = res["summary"]
    sw, om = [v[0] for v in table.values()], [v[1] for v in table.values()]
    assert s["switch"]["wer_ood_avg"]["mean"] == pytest.approx(statistics.mean(sw))
    assert s["switch"]["wer_ood_avg"]["std"] == pytest.approx(statistics.stdev(sw))
    assert s["omni"]["wer_ood_avg"]["std"] == pytest.approx(statistics.stdev(om))
    assert s["switch"]["wer"]["test_seen"]["mean"] == 12.0 and s["omni"]["wer"]["test_seen"]["std"] == 0.0
    assert s["switch"]["final"]["train_loss"]["mean"] == 52.0
    assert s["omni"]["routing"]["cramers_v_mean"]["mean"] == pytest.approx(0.2)
    assert s["omni"]["routing"]["cramers_v_mean"]["std"] == pytest.approx(0.1)
    rel = res["relative"]["switch"]["omni"]["wer"]["ood_avg"]
    assert rel == pytest.approx(100 * (statistics.mean(om) - 32.0) / 32.0)
    v = "\n".join(res["verdict"])
    diff, spread = abs(statistics.mean(om) - 32.0), max(statistics.stdev(sw), statistics.stdev(om))
    assert f"the difference ({diff:.2f} points) is not larger than the larger seed standard deviation " \
           f"({spread:.2f}) over 3 seeds" in v
    md = qr.markdown(res)
    assert f"| Switch Conformer | 12.00 ± 1.00 | {32:.2f} ± {statistics.stdev(sw):.2f} |" in md
    assert "## Per seed (WER %)" in md and "| 3 | Omni-router Conformer |" in md
    assert "ASR loss = CTC + attention loss (for MoE models `loss_asr`" in md
    qr.plot_losses(res, str(tmp_path / "loss.png"))
    assert (tmp_path / "loss.png").stat().st_size > 0


def test_resumed_training_logs_are_merged(tmp_path):
    exp = fake_run(tmp_path, 1, "omni", wers(10.0, [20.0] * 4), moe=True,
                   epochs=[(1, 50.0, 60.0), (2, 45.0, 55.0)], log_name="train.log.20261127T101500")
    # the resumed run's log: epoch 2 again (interrupted after its line was written) and epoch 3
    lines = [EPOCH_LINE.format(mm=30, ep=2, tl=44.0, vl=54.0, acc=0.2, asr="", vasr="", tt="10 seconds"),
             EPOCH_LINE.format(mm=31, ep=3, tl=40.0, vl=50.0, acc=0.3, asr="", vasr="", tt="10 seconds")]
    (exp / "train.log").write_text("\n".join(lines) + "\n")
    run = qr.collect_run(str(exp), None, OOD, compute_params=False)
    assert [os.path.basename(p) for p in run["train_logs"]] == ["train.log.20261127T101500", "train.log"]
    assert run["curves"]["epoch"] == [1, 2, 3]
    assert run["curves"]["train_loss"] == [50.0, 44.0, 40.0]
    assert run["final"]["best_valid_acc"] == pytest.approx(0.3)
    assert run["train_seconds"] == pytest.approx(62.5 + 3 + 2 * (10 + 3))
    assert run["log_span_seconds"] == pytest.approx(60.0 + 60.0)  # 10:10-10:11 and 10:30-10:31


def test_missing_runs_and_decode_dirs(tmp_path):
    fake_run(tmp_path, 1, "dense", wers(10.0, [20.0] * 4))
    res = qr.collect(str(tmp_path), ["dense", "omni"], [1], compute_params=False)
    assert res["runs"]["1"]["omni"] is None and res["summary"]["omni"] is None
    assert any("seed 1 omni" in m for m in res["missing"])
    assert "missing runs" in qr.markdown(res)
    exp = tmp_path / "seed1" / "asr_dense"
    (exp / "decode_other" / "test_seen" / "score_wer").mkdir(parents=True)
    (exp / "decode_other" / "test_seen" / "score_wer" / "summary.json").write_text('{"Err": 1.0}')
    with pytest.raises(ValueError, match="several decode dirs"):
        qr.collect_run(str(exp), None, OOD, compute_params=False)
    assert qr.collect_run(str(exp), "decode_fake", OOD, compute_params=False)["wer"]["test_seen"] == 10.0
    assert qr.main(["--root", str(tmp_path / "nothing"), "--out", str(tmp_path / "o")]) == 1


def test_quality_sh_rejects_bad_options(tmp_path):
    sh = str(BENCH / "quality.sh")
    p = subprocess.run(["bash", sh, "--no_such_option", "1"], capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and "unknown option --no_such_option" in p.stderr
    p = subprocess.run(["bash", sh, "--seeds", "1 x"], capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and "--seeds" in p.stderr
    p = subprocess.run(["bash", sh, "--help"], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and "--local_data_opts" in p.stdout and "--seeds" in p.stdout
    p = subprocess.run(["bash", sh, "--python", PYTHON, "--workdir", str(tmp_path / "w"), "--out", str(tmp_path / "o"),
                        "--configs", "x=conf/nope.yaml"], capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and "conf/nope.yaml not found" in p.stderr


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


def test_ctc_only_transformer_report_with_reused_runs(tmp_path):
    """CTC-only runs (no acc): valid CER columns, the backbone named from config.yaml, the training-loss
    and CER sentences, runs reused from an earlier report's JSON, and the report's file names."""
    old = tmp_path / "old"
    fake_run(old, 0, "switch", wers(8.0, [20.0] * 4), moe=True, epochs=[(1, 45.0, 55.0)])
    fake_run(old, 0, "omni", wers(9.0, [21.0] * 4), moe=True, epochs=[(1, 44.0, 54.0)])
    earlier = qr.write_report(qr.collect(str(old), ["switch", "omni"], [0], compute_params=False),
                              str(tmp_path / "o1"))
    new = tmp_path / "new"
    exp = fake_run(new, 0, "omni_per_position", wers(8.5, [19.0] * 4), moe=True, epochs=[(1, 43.0, 53.0)])
    (exp / "config.yaml").write_text("encoder: omni_router_conformer\nencoder_conf:\n    num_blocks: 2\n")
    assert qr.main(["--root", str(new), "--models", "omni_per_position", "--seeds", "0", "--name", "quality_pp",
                    "--reuse", earlier["json"], "--reuse_models", "switch", "omni", "--reuse_note", "same code",
                    "--note", "seed 0 paused 5 min", "--note", "second note", "--out", str(tmp_path / "o2")]) == 0
    md = (tmp_path / "o2" / "quality_pp.md").read_text()
    assert (tmp_path / "o2" / "quality_pp_loss.png").stat().st_size > 0 and "](quality_pp_loss.png)" in md
    assert md.startswith("# Quality: Switch Conformer vs Omni-router Conformer vs Omni-router Conformer, one "
                         "router per FFN position\n")
    assert "**reused runs**: Switch Conformer, Omni-router Conformer from `" in md and "; same code" in md
    assert "\n- note: seed 0 paused 5 min\n- note: second note\n" in md
    assert "Omni-router per FFN position vs Omni-router on out-of-domain average WER: -9.5% relative" in md
    assert "Final training ASR loss, Omni-router per FFN position vs Switch: 42.90 vs 44.90 (lower; one seed" in md
    assert "Omni-router per FFN position beats Switch on the out-of-domain average WER" in md
    assert "| valid acc |" in md  # the Conformer runs report an attention accuracy
    with pytest.raises(SystemExit):
        qr.main(["--root", str(new), "--seeds", "1", "--reuse", earlier["json"], "--reuse_models", "switch",
                 "--out", str(tmp_path / "o3")])  # no seed 1 in the earlier report
    with pytest.raises(SystemExit):
        qr.main(["--root", str(new), "--reuse", earlier["json"], "--out", str(tmp_path / "o3")])

    # CTC only: ESPnet logs cer_ctc but no acc in validation
    ctc = tmp_path / "ctc"
    for m, (tl, c) in {"dense": (50.0, 0.40), "omni": (48.0, 0.35)}.items():
        e = fake_run(ctc, 0, m, wers(90.0, [100.0] * 4), moe=m != "dense")
        line = EPOCH_LINE.format(mm=10, ep=1, tl=tl, vl=60.0, acc="nan", asr="", vasr="", tt="10 seconds")
        (e / "train.log").write_text(line.replace("acc=nan, ", f"cer_ctc={c}, acc=nan, ") + "\n")
        (e / "config.yaml").write_text(f"encoder: {'omni_router_transformer' if m == 'omni' else 'transformer'}\n")
    res = qr.collect(str(ctc), ["dense", "omni"], [0], compute_params=False)
    assert res["labels"] == {"dense": "Dense Transformer", "omni": "Omni-router Transformer"}
    assert qr.ctc_only(res) and res["runs"]["0"]["omni"]["final"]["best_valid_cer_ctc"] == pytest.approx(0.35)
    md = qr.markdown(res)
    assert "| valid CER (CTC) | best valid CER (CTC) |" in md and "| 0.3500 | 0.3500 |" in md
    assert "ASR loss = CTC loss (no attention decoder; for MoE models `loss_asr`" in md
    assert "Omni-router vs dense on out-of-domain average CER: +0.0% relative" in md


def test_reuse_check_compares_reruns_epoch_by_epoch(tmp_path):
    """--reuse_check: the re-runs' epochs against the reused runs', with the seed spread for scale."""
    old = tmp_path / "old"
    for s, (t1, v1) in {0: (86.0, 66.0), 1: (85.5, 67.0)}.items():
        for m in ("switch", "omni"):
            fake_run(old, s, m, wers(8.0, [20.0] * 4), moe=True, epochs=[(1, t1, v1), (2, 60.0, 50.0)])
    earlier = qr.write_report(qr.collect(str(old), ["switch", "omni"], [0, 1], compute_params=False),
                              str(tmp_path / "o1"))
    check = tmp_path / "check"
    fake_run(check, 0, "switch", {}, moe=True, epochs=[(1, 86.25, 66.0)])
    fake_run(check, 0, "omni", {}, moe=True, epochs=[(1, 86.0, 65.9)])
    new = tmp_path / "new"
    fake_run(new, 0, "omni_per_position", wers(8.5, [19.0] * 4), moe=True, epochs=[(1, 43.0, 53.0)])
    fake_run(new, 1, "omni_per_position", wers(8.5, [19.0] * 4), moe=True, epochs=[(1, 43.0, 53.0)])
    args = ["--root", str(new), "--models", "omni_per_position", "--seeds", "0", "1", "--reuse", earlier["json"],
            "--reuse_models", "switch", "omni", "--out", str(tmp_path / "o2")]
    assert qr.main(args + ["--reuse_check", str(check)]) == 0
    md = (tmp_path / "o2" / "quality.md").read_text()
    # epoch time: ESPnet's train time= plus the valid and att_plot times of EPOCH_LINE (62.5 + 2.5 + 0.5 s)
    assert "| Switch Conformer | 0 | 1 | 85.900 / 86.150 | 65.900 / 65.900 | 65.5 s / 65.5 s |" in md
    assert "| Omni-router Conformer | 0 | 1 | 85.900 / 85.900 | 65.900 / 65.800 | 65.5 s / 65.5 s |" in md
    assert "Largest difference: 0.250; the reused runs' seeds differ by up to 1.000 at the same epochs." in md
    assert "Not checked: seed 1 switch" in md and "seed 1 omni" in md
    result = json.loads((tmp_path / "o2" / "quality.json").read_text())
    assert result["reused"]["check"]["max_diff"] == pytest.approx(0.25)
    with pytest.raises(SystemExit):  # no epoch in common
        qr.main(args + ["--reuse_check", str(tmp_path / "nothing")])
    with pytest.raises(SystemExit):
        qr.main(["--root", str(new), "--reuse_check", str(check), "--out", str(tmp_path / "o3")])


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


def test_streaming_block_times_one_block_per_call(tmp_path):
    """streaming_block.py on the tiny streaming config (and its dense twin): each timed call
    emits one hop of encoder frames, the Omni encoder records exactly those, and the report
    says the worst run."""
    import yaml

    import streaming_block

    tiny = REPO / "conf" / "tiny" / "train_asr_omni_router_contextual_block_conformer.yaml"
    conf = yaml.safe_load(tiny.read_text())
    conf["encoder"] = "contextual_block_conformer"
    conf["encoder_conf"] = {k: v for k, v in conf["encoder_conf"].items() if k not in ("num_experts", "router_groups")}
    dense = tmp_path / "dense.yaml"
    dense.write_text(yaml.safe_dump(conf))
    out = tmp_path / "streaming_block.json"
    streaming_block.main([f"--dense-config={dense}", f"--omni-config={tiny}", "--runs", "2", "--warmup", "0",
                          "--repeats", "1", "--context-seconds", "1", "--out", str(out)])
    run = json.loads(out.read_text())
    hop = conf["encoder_conf"]["hop_size"]
    assert run["config"]["chunk_frames"] == 4 * hop
    assert run["first_call"]["dense"]["output_frames"] == hop
    assert run["first_call"]["omni"]["recorded_rows"] == [hop] * 4  # 2 blocks x (macaron, second FFN)
    assert len(run["runs"]) == 2 and run["worst_ratio"] == max(r["ratio"] for r in run["runs"])
    report = (tmp_path / "streaming_block.md").read_text()
    assert f"Worst of 2 runs: Omni {run['worst_ratio']:.3f}x dense per block" in report
    assert f"Generated by `python benchmarks/streaming_block.py --dense-config={dense} --omni-config={tiny} --runs 2" in report


def test_streaming_block_times_trained_models_on_real_features(tiny_omni, tmp_path):
    """--dense-model/--omni-model: the encoders of two models built from exp dirs (ESPnet configs
    with the tiny streaming encoders), fed the features of a real audio file (--wav)."""
    import torch
    import yaml
    from espnet2.tasks.asr import ASRTask

    import streaming_block

    data, exp = tiny_omni
    base = yaml.safe_load((Path(exp) / "config.yaml").read_text())
    streaming = yaml.safe_load((REPO / "conf" / "tiny" / "train_asr_omni_router_contextual_block_conformer.yaml").read_text())
    dense_conf = {k: v for k, v in streaming["encoder_conf"].items() if k not in ("num_experts", "router_groups")}
    models = {}
    for key, encoder, conf in (("dense", "contextual_block_conformer", dense_conf),
                               ("omni", streaming["encoder"], streaming["encoder_conf"])):
        d = tmp_path / key
        d.mkdir()
        (d / "config.yaml").write_text(yaml.safe_dump({**base, "encoder": encoder, "encoder_conf": conf}))
        model, _ = ASRTask.build_model_from_file(str(d / "config.yaml"), None, "cpu")
        torch.save(model.state_dict(), d / "1epoch.pth")
        models[key] = str(d)
    import numpy as np
    import soundfile

    wav = str(tmp_path / "speech.wav")  # 3 utterances one after another: > 1 s of context + one hop
    paths = [line.split()[1] for line in (Path(data) / "wav.scp").read_text().splitlines()[:3]]
    soundfile.write(wav, np.concatenate([soundfile.read(p, dtype="float32")[0] for p in paths]), 16000)
    out = tmp_path / "streaming_block.json"
    streaming_block.main(["--dense-model", models["dense"], "--omni-model", models["omni"], "--wav", wav,
                          "--runs", "1", "--warmup", "0", "--repeats", "1", "--context-seconds", "1",
                          "--out", str(out)])
    run = json.loads(out.read_text())
    assert run["config"]["trained"] is True and run["config"]["wav"] == wav
    assert run["first_call"]["dense"]["output_frames"] == streaming["encoder_conf"]["hop_size"]
    assert "trained, batch 1, features of" in (tmp_path / "streaming_block.md").read_text()
    with pytest.raises(SystemExit):
        streaming_block.main(["--dense-model", models["dense"], "--out", str(out)])
