"""Shared pieces of the benchmark tests: paths, the tiny quality run (the ``quality`` fixture of
conftest.py), handmade experiment dirs for the report tests, and plain ESPnet decoding to compare with."""
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "benchmarks"
sys.path.insert(0, str(BENCH))

import roe as roe_bench  # noqa: E402

PYTHON = sys.executable
TINY = {"dense": "conf/tiny/train_asr_conformer.yaml", "switch": "conf/tiny/train_asr_switch_conformer.yaml",
        "omni": "conf/tiny/train_asr_omni_router_conformer.yaml"}
TEST_SETS = ["test_seen", "test_noisy", "test_tempo"]
DECODE_TAG = "decode_asr_maxlenratio0.3"


def run_tiny_quality(tmp):
    """quality.sh with the tiny configs, 1 epoch on a tiny synth_en corpus, three test sets, the three
    models side by side (``--jobs 3``), in a work dir made of links to the recipe under ``tmp``."""
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
