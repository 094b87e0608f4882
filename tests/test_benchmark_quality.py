"""benchmarks/quality.sh and the quality report (quality_report.py and its modules): the tiny
end-to-end run (the ``quality`` fixture), and the report generator on handmade experiment dirs
(arithmetic, seeds, resumed logs, reused runs, reuse checks)."""
import json
import math
import os
import statistics
import shutil
import subprocess
from pathlib import Path

import pytest

from bench_helpers import BENCH, DECODE_TAG, EPOCH_LINE, OOD, PYTHON, TEST_SETS, TINY, fake_run, score, wers  # noqa: E402
import quality_report as qr  # noqa: E402
import quality_markdown as qmd  # noqa: E402
import quality_runs as qruns  # noqa: E402


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


@pytest.mark.parametrize("encoders, name", [
    (["e_branchformer", "omni_router_e_branchformer"], "E-Branchformer"),
    (["contextual_block_conformer", "omni_router_contextual_block_conformer"], "contextual-block Conformer"),
    (["conformer", "switch_conformer", None], "Conformer"),
    (["transformer", "omni_router_transformer"], "Transformer"),
    (["conformer", "e_branchformer"], "encoder"),
])
def test_report_labels_name_the_encoder_family(encoders, name):
    runs = [{"encoder": e} for e in encoders]
    assert qruns.model_labels(["dense", "omni"], runs) == {"dense": f"Dense {name}", "omni": f"Omni-router {name}"}


def test_parse_epoch_line_and_timespan():
    line = EPOCH_LINE.format(mm=10, ep=3, tl=93.1, vl=102.4, acc=0.5, asr="loss_asr=93.0, ", vasr="",
                             tt="1 hour, 2 minutes and 3.5 seconds")
    ep, phases = qruns.parse_epoch_line(line)
    assert ep == 3
    assert phases["train"]["loss"] == 93.1 and phases["train"]["loss_asr"] == 93.0
    assert phases["train"]["time"] == pytest.approx(3723.5) and phases["train"]["train_time"] == 1.087
    assert phases["valid"]["loss"] == 102.4 and phases["valid"]["time"] == 2.5
    assert phases["att_plot"]["time"] == 0.5
    assert qruns.parse_epoch_line("1epoch started") is None
    assert qruns.parse_timespan("523 milliseconds") == pytest.approx(0.523)
    assert qruns.parse_timespan("2 days and 1 second") == 2 * 86400 + 1


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
    run = qruns.collect_run(str(exp), None, OOD, compute_params=False)
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
        qruns.collect_run(str(exp), None, OOD, compute_params=False)
    assert qruns.collect_run(str(exp), "decode_fake", OOD, compute_params=False)["wer"]["test_seen"] == 10.0
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
    assert qmd.ctc_only(res) and res["runs"]["0"]["omni"]["final"]["best_valid_cer_ctc"] == pytest.approx(0.35)
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
