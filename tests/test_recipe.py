"""The pip-only recipe: egs2/TEMPLATE/asr1/asr.sh driven by egs2/synth_en/asr1/run.sh.

One shared tiny run (module fixture, a few minutes on 2 CPU cores): the real local/data.sh makes
a tiny corpus, then run.sh runs stages 1-4 (``--stop_stage 4``) and, as a second call, stages 5-8
with conf/tiny/train_asr_omni_router_conformer.yaml for one epoch.  Further tests decode again
with ``--stage 6`` and check stage 2's handling of broken data on handmade data dirs.
"""

import os
import re
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "egs2" / "synth_en" / "asr1"
TEMPLATE = REPO / "egs2" / "TEMPLATE" / "asr1"
PYTHON = sys.executable

ALL_SETS = ["train", "dev", "test_seen", "test_unseen_voice", "test_noisy", "test_tempo",
            "test_real"]
TEST_SETS = ALL_SETS[2:]
TABLE_HEADER = "|dataset|Snt|Wrd|Corr|Sub|Del|Ins|Err|S.Err|"
COMMON = [
    "--python", PYTHON,
    "--asr_config", "conf/tiny/train_asr_omni_router_conformer.yaml",
    "--inference_config", "conf/tiny/decode_asr.yaml",
    "--lm_config", "conf/tiny/train_lm.yaml",  # run.sh trains and uses an LM (--use_lm true)
    "--asr_args", "--max_epoch 1",
    "--nj", "2",
    "--local_data_opts", "--train_hours 0.01 --dev_utts 6 --test_utts 4",
    # an untrained model babbles until the maximum length: maxlenratio 0.0 (conf/tiny) allows one
    # token per encoder frame (25 per second); 0.3 still allows ~7 tokens per second of speech
    "--inference_args", "--maxlenratio 0.3",
    # stage 9 without network, stage 10 on a few utterances
    "--hf_repo", "demo-user/synth-omni", "--dry_run", "true", "--analysis_max_utts", "4",
]
DECODE_TAG = "decode_asr_asr_model_valid.loss.ave_lm_tiny_train_lm_char_maxlenratio0.3"
LM_EXP = "exp/lm_tiny_train_lm_char"


def make_recipe_dir(root: Path) -> Path:
    """A copy of egs2/synth_en/asr1 made of links to the repository's files."""
    d = root / "egs2" / "synth_en" / "asr1"
    d.mkdir(parents=True)
    for name in ("run.sh", "asr.sh", "pyscripts", "conf", "local"):
        assert (RECIPE / name).exists(), f"recipe file {RECIPE / name} is missing"
        (d / name).symlink_to(RECIPE / name)
    return d


def run(cwd: Path, cmd, timeout=600):
    t0 = time.time()
    proc = subprocess.run(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, timeout=timeout)
    proc.elapsed = time.time() - t0
    return proc


def ok(proc):
    assert proc.returncode == 0, f"exit {proc.returncode}:\n{proc.stdout[-6000:]}"
    return proc.stdout


def read_kaldi(path: Path):
    out = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        parts = line.split(maxsplit=1)
        if parts:
            out[parts[0]] = parts[1] if len(parts) > 1 else ""
    return out


def training_dirs(d: Path):
    return sorted(p for p in (d / "exp").glob("asr_*") if not p.name.startswith("asr_stats"))


@pytest.fixture(scope="module")
def recipe(tmp_path_factory):
    d = make_recipe_dir(tmp_path_factory.mktemp("recipe"))
    # one decoding job per test set here (ESPnet's start-up costs ~9 CPU-s per process);
    # the --stage 6 test below decodes with 2 jobs
    first = run(d, ["./run.sh", *COMMON, "--inference_nj", "1", "--stop_stage", "4"])
    after_stage4 = training_dirs(d)
    stats_files = sorted(str(p.relative_to(d)) for p in (d / "exp").rglob("feats_stats.npz"))
    second = run(d, ["./run.sh", *COMMON, "--inference_nj", "1", "--stage", "5"])
    print(f"\nrecipe timings: stages 1-4 {first.elapsed:.1f} s, stages 5-8 {second.elapsed:.1f} s")
    return {"dir": d, "first": first, "second": second, "after_stage4": after_stage4,
            "stats_after_stage4": stats_files}


@pytest.fixture(scope="module")
def exp(recipe):
    ok(recipe["second"])
    dirs = training_dirs(recipe["dir"])
    assert len(dirs) == 1, dirs
    return dirs[0]


def test_stop_stage_4_stops_after_stats(recipe):
    out = ok(recipe["first"])
    d = recipe["dir"]
    for n in (1, 2, 3, 4):
        assert f"Stage {n}:" in out
    assert "Stage 5:" not in out
    assert recipe["after_stage4"] == [], "--stop_stage 4 created a training dir"
    assert "exp/asr_stats_raw_char/train/feats_stats.npz" in recipe["stats_after_stage4"]


def test_data_and_format_stages(recipe):
    ok(recipe["second"])
    d = recipe["dir"]
    for s in ALL_SETS:
        for f in ("wav.scp", "text", "utt2spk"):
            assert (d / "data" / s / f).is_file(), f"data/{s}/{f}"
        raw = d / "dump" / "raw" / s
        wavs = read_kaldi(raw / "wav.scp")
        texts = read_kaldi(raw / "text")
        nsamp = read_kaldi(raw / "utt2num_samples")
        assert wavs and set(wavs) == set(texts) == set(nsamp) == set(read_kaldi(raw / "utt2spk"))
        for utt, path in list(wavs.items())[:3]:
            assert (d / path).parent.resolve() == (raw / "data").resolve()
            info = sf.info(str(d / path))
            assert (info.samplerate, info.channels) == (16000, 1)
            assert info.frames == int(nsamp[utt])
    n_train = len(read_kaldi(d / "data/train/wav.scp"))
    assert f"[train] kept {n_train} of {n_train} utterances" in recipe["first"].stdout


def test_token_list(recipe):
    d = recipe["dir"]
    tokens = (d / "data/token_list/char/tokens.txt").read_text().splitlines()
    assert tokens[:2] == ["<blank>", "<unk>"] and tokens[-1] == "<sos/eos>"
    assert len(tokens) == len(set(tokens))
    # run.sh's default targets are characters: the normalised corpus has A-Z, apostrophe, space
    assert set(tokens[2:-1]) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZ'") | {"<space>"}
    assert "<space>" in tokens and len(tokens) > 20
    assert not (d / "data/token_list/char/bpe.model").exists()


def test_stats(recipe):
    d = recipe["dir"]
    stats = d / "exp/asr_stats_raw_char"
    npz = np.load(stats / "train/feats_stats.npz")
    assert {"count", "sum", "sum_square"} <= set(npz.files)
    assert npz["sum"].shape == (40,)  # conf/tiny: n_mels 40
    train_keys = set(read_kaldi(d / "dump/raw/train/wav.scp"))
    for f in ("speech_shape", "text_shape", "text_shape.char"):
        assert set(read_kaldi(stats / "train" / f)) == train_keys
    ntok = len((d / "data/token_list/char/tokens.txt").read_text().splitlines())
    first = (stats / "train/text_shape.char").read_text().splitlines()[0]
    assert first.endswith(f",{ntok}")


def test_training_outputs(exp):
    assert exp.name == "asr_tiny_train_asr_omni_router_conformer_raw_char_max_epoch1"
    assert (exp / "train.log").is_file()
    assert (exp / "1epoch.pth").is_file()
    assert (exp / "valid.loss.ave.pth").exists()  # conf/tiny: best_model_criterion valid.loss
    config = (exp / "config.yaml").read_text()
    assert "encoder: omni_router_conformer" in config
    assert "max_epoch: 1" in config


def test_language_model_trained_and_used(recipe, exp):
    d = recipe["dir"]
    lm = d / LM_EXP
    assert (lm / "train.log").is_file() and (lm / "1epoch.pth").is_file()
    assert (lm / "valid.loss.ave.pth").exists()
    config = (lm / "config.yaml").read_text()
    assert "lm: seq_rnn" in config
    # the LM shares the ASR model's token list (the char list of stage 3)
    import yaml

    lm_tokens = yaml.safe_load(config)["token_list"]
    assert lm_tokens == (d / "data/token_list/char/tokens.txt").read_text().splitlines()
    assert f"language model -> {LM_EXP}" in recipe["second"].stdout
    log = (exp / DECODE_TAG / "test_seen" / "logdir" / "asr_inference.1.log").read_text()
    assert f"--lm_file {LM_EXP}/valid.loss.ave.pth" in log
    assert f"--lm_train_config {LM_EXP}/config.yaml" in log


def test_decode_outputs_and_rtf(recipe, exp):
    d = recipe["dir"]
    dec = exp / DECODE_TAG
    for s in TEST_SETS:
        hyps = read_kaldi(dec / s / "text")
        refs = read_kaldi(d / "dump/raw" / s / "text")
        assert set(hyps) == set(refs), s
        logs = sorted((dec / s / "logdir").glob("asr_inference.*.log"))
        assert len(logs) == 1, logs  # --inference_nj 1
        rtf = dict(line.split(": ", 1) for line in (dec / s / "rtf.txt").read_text().splitlines())
        assert float(rtf["rtf_wall"]) > 0 and float(rtf["rtf_decode_only"]) > 0
        assert int(rtf["utterances"]) == len(refs)
        assert re.search(rf"RTF {s}: .* RTF \(wall\) [0-9.]+", recipe["second"].stdout)


def test_scores_and_results_md(recipe, exp):
    dec = exp / DECODE_TAG
    for s in TEST_SETS:
        for unit in ("wer", "cer"):
            res = (dec / s / f"score_{unit}" / "result.txt").read_text()
            assert "|Snt|Wrd|Corr|Sub|Del|Ins|Err|S.Err|" in res
            assert "| Sum/Avg |" in res
    md = (exp / "RESULTS.md").read_text()
    assert md.count(TABLE_HEADER) == 2
    assert "### WER" in md and "### CER" in md
    assert "- espnet version: `espnet 202511`" in md
    assert "- pytorch version: `pytorch" in md
    wer_part = md.split("### WER")[1].split("### CER")[0]
    for s in TEST_SETS:
        row = [line for line in wer_part.splitlines()
               if line.startswith(f"|{DECODE_TAG}/{s}|")]
        assert len(row) == 1, s
        cells = row[0].strip("|").split("|")
        assert len(cells) == 9
        snt = len(read_kaldi(recipe["dir"] / "dump/raw" / s / "text"))
        assert int(cells[1]) == snt
        corr, sub, dele = (float(c) for c in cells[3:6])
        assert abs(corr + sub + dele - 100.0) < 0.2


def test_packed_model(recipe, exp):
    z = exp / "asr_model.zip"
    names = zipfile.ZipFile(z).namelist()
    assert "meta.yaml" in names
    rel = exp.relative_to(recipe["dir"])
    # pack stores symlinks (valid.loss.ave.pth -> ... -> 1epoch.pth) under their target's name
    model = os.path.relpath((exp / "valid.loss.ave.pth").resolve(), recipe["dir"].resolve())
    for f in (f"{rel}/config.yaml", f"{rel}/RESULTS.md", model,
              "exp/asr_stats_raw_char/train/feats_stats.npz", f"{LM_EXP}/config.yaml"):
        assert f in names, (f, names)
    lm_model = os.path.relpath((recipe["dir"] / LM_EXP / "valid.loss.ave.pth").resolve(),
                               recipe["dir"].resolve())
    assert lm_model in names, (lm_model, names)
    assert not [n for n in names if n.endswith("bpe.model")]  # characters: no tokenizer model
    from espnet_model_zoo.downloader import ModelDownloader

    files = ModelDownloader(str(recipe["dir"] / "zoo_cache")).download_and_unpack(str(z))
    assert Path(files["asr_train_config"]).is_file()
    assert Path(files["asr_model_file"]).is_file()
    assert Path(files["lm_train_config"]).is_file() and Path(files["lm_file"]).is_file()
    # the hub loader fuses the packed LM, unless told not to
    import espnet_omnirouter  # noqa: F401
    from espnet_omnirouter.hub import load_speech2text

    cache = str(recipe["dir"] / "hub_cache")
    assert "lm" in load_speech2text(z, cache, lm_weight=0.6).beam_search.full_scorers
    plain = load_speech2text(z, cache, lm_train_config=None, lm_file=None)
    assert "lm" not in plain.beam_search.full_scorers


def test_upload_dry_run_writes_card_and_folder(recipe, exp):
    folder = exp / "hf_upload"
    assert (folder / "meta.yaml").is_file()
    card = (folder / "README.md").read_text()
    results = (exp / "RESULTS.md").read_text().strip()
    assert results in card  # the card's tables are RESULTS.md's
    usage = card.split("## Usage")[1]
    # ESPnet's own zoo loader, with nothing of ours imported before it: the installed hook registers
    zoo = usage.index('Speech2Text.from_pretrained("demo-user/synth-omni")')
    assert usage.index("pip install espnet_omnirouter") < zoo
    assert "import espnet_omnirouter" not in usage[:zoo]
    assert 'load_speech2text("demo-user/synth-omni")' in usage
    assert "encoder: `omni_router_conformer`" in card
    assert "all MoE FFNs share 1 router(s)" in card and "4 experts per MoE FFN" in card
    assert "dry run: model folder and card ready" in recipe["second"].stdout


def test_routing_analysis_stage(recipe, exp):
    out = exp / "routing_analysis"
    for f in ("usage.json", "layer_dependence.json", "segments.json", "sets.json", "summary.md"):
        assert (out / f).is_file(), f
    assert "Stage 10:" in recipe["second"].stdout


def test_stage5_prints_one_line_per_epoch(recipe, exp):
    """The ASR and LM trainings each show their epochs on the console (train.log holds the rest):
    losses and, for ASR, accuracy as ESPnet logged them (ESPnet's LM logs no accuracy)."""
    out = recipe["second"].stdout
    for name, log in (("ASR", exp / "train.log"), ("LM", recipe["dir"] / LM_EXP / "train.log")):
        results = next(line for line in log.read_text().splitlines() if "1epoch results" in line)
        train, valid = re.search(r"\[train\] (.*?) \[valid\] (.*)$", results).groups()
        m = re.search(rf"^\S+ \(asr\.sh\) \[{name}\] epoch 1/1: train loss (\S+), valid loss ([^,;]+)"
                      rf"(?:, valid acc (\S+))?; epoch .+, done$", out, re.M)
        assert m, (name, out)
        print(f"\n{m.group(0)}")
        logged = [re.search(rf"(?:^|, ){key}=([^,]+)", text) for key, text in
                  (("loss", train), ("loss", valid), ("acc", valid))]
        logged = [float(v.group(1)) if v else None for v in logged]
        assert [None if v is None else float(v) for v in m.group(1, 2, 3)] == logged
        assert (logged[2] is not None) == (name == "ASR")
        assert len(re.findall(rf"\[{name}\] epoch ", out)) == 1
    assert out.index("[LM] epoch 1/1") < out.index("[ASR] epoch 1/1") < out.index("training finished:")


def test_failed_training_fails_stage5_and_names_the_key(recipe, exp):
    """A training that fails ends the stage with its status and log (the epoch follower does
    not hang or hide it); here a misspelt encoder_conf key, named with the key meant."""
    d = recipe["dir"]
    proc = run(d, ["./run.sh", *COMMON, "--use_lm", "false", "--stage", "5", "--stop_stage", "5",
                   "--asr_args", "--max_epoch 1 --encoder_conf num_expert=4"], timeout=300)
    assert proc.returncode == 1, proc.stdout[-3000:]
    assert re.search(r"ERROR: stage 5 \(training -> .*\) failed: training exited with status 1", proc.stdout)
    assert "has no key encoder_conf.num_expert (did you mean 'num_experts'?)" in proc.stdout
    assert "Successfully finished" not in proc.stdout and "[ASR] epoch" not in proc.stdout


def test_stage6_decodes_again_without_training(recipe, exp):
    d = recipe["dir"]
    ckpts = {p: p.stat().st_mtime_ns for p in exp.glob("*.pth")}
    assert ckpts
    train_log = (exp / "train.log").stat().st_mtime_ns
    dec = exp / DECODE_TAG / "test_seen"
    (dec / "text").unlink()
    out = ok(run(d, ["./run.sh", *COMMON, "--stage", "6", "--test_sets", "test_seen",
                     "--inference_nj", "2"]))
    assert "Stage 6:" in out and "Stage 5:" not in out
    assert {p: p.stat().st_mtime_ns for p in exp.glob("*.pth")} == ckpts
    assert (exp / "train.log").stat().st_mtime_ns == train_log
    # two decoding jobs, each on its share of the keys, merged into one sorted text
    keys = [set(read_kaldi(dec / "logdir" / f"keys.{n}.scp")) for n in (1, 2)]
    assert keys[0] and keys[1] and not keys[0] & keys[1]
    for n in (1, 2):
        assert (dec / "logdir" / f"asr_inference.{n}.log").is_file()
    hyps = list(read_kaldi(dec / "text"))
    assert hyps == sorted(hyps) and set(hyps) == keys[0] | keys[1]
    assert set(hyps) == set(read_kaldi(d / "dump/raw/test_seen/text"))
    assert float(dict(line.split(": ", 1) for line in
                      (dec / "rtf.txt").read_text().splitlines())["jobs"]) == 2
    assert (exp / "asr_model.zip").is_file()


def test_use_lm_false_decodes_without_the_lm(recipe, exp):
    d = recipe["dir"]
    out = ok(run(d, ["./run.sh", *COMMON, "--use_lm", "false", "--stage", "6", "--stop_stage", "7",
                     "--test_sets", "test_real", "--inference_nj", "1"]))
    tag = DECODE_TAG.replace("_lm_tiny_train_lm_char", "")
    assert "Stage 5:" not in out and "language model" not in out
    log = (exp / tag / "test_real" / "logdir" / "asr_inference.1.log").read_text()
    assert "--lm_file" not in log and "--lm_train_config" not in log
    assert set(read_kaldi(exp / tag / "test_real" / "text")) == set(
        read_kaldi(d / "dump/raw/test_real/text"))


# --------------------------------------------------------------------------------------------
# stage 2 on handmade data


def write_wav(path: Path, seconds: float, rate: int, channels: int = 1):
    t = np.arange(int(seconds * rate)) / rate
    x = 0.3 * np.sin(2 * np.pi * 440 * t)
    if channels > 1:
        x = np.stack([x] * channels, axis=1)
    sf.write(str(path), x, rate, subtype="PCM_16")


def handmade_recipe(root: Path, entries):
    """entries: (uttid, wav.scp value or None for no line, transcript or None for no line)."""
    d = root / "asr1"
    (d / "data" / "handmade").mkdir(parents=True)
    (d / "asr.sh").symlink_to(RECIPE / "asr.sh")
    with open(d / "data/handmade/wav.scp", "w") as fw, \
            open(d / "data/handmade/text", "w") as ft, \
            open(d / "data/handmade/utt2spk", "w") as fu:
        for utt, wav, text in entries:
            if wav is not None:
                fw.write(f"{utt} {wav}\n")
            if text is not None:
                ft.write(f"{utt} {text}\n".replace(" \n", "\n"))
            fu.write(f"{utt} spk1\n")
    return d


def test_stage2_drops_broken_utterances_and_continues(tmp_path):
    audio = tmp_path / "audio"
    audio.mkdir()
    write_wav(audio / "a.wav", 1.0, 8000, channels=2)
    write_wav(audio / "b.wav", 0.5, 22050)
    write_wav(audio / "c.wav", 0.7, 16000)
    write_wav(audio / "short.wav", 0.05, 16000)
    write_wav(audio / "e.wav", 0.6, 16000)
    (audio / "corrupt.wav").write_bytes(b"RIFF\x00\x01garbage" + os.urandom(2000))
    entries = [
        ("utt_good_8k_stereo", str(audio / "a.wav"), "HELLO WORLD"),
        ("utt_good_22k", str(audio / "b.wav"), "GOOD MORNING"),
        ("utt_good_pipe", f"cat {audio / 'c.wav'} |", "HELLO AGAIN"),
        ("utt_missing", str(audio / "does_not_exist.wav"), "WHERE IS IT"),
        ("utt_corrupt", str(audio / "corrupt.wav"), "BROKEN FILE"),
        ("utt_empty_text", str(audio / "e.wav"), ""),
        ("utt_no_text", str(audio / "e.wav"), None),
        ("utt_too_short", str(audio / "short.wav"), "HI"),
    ]
    d = handmade_recipe(tmp_path, entries)
    proc = run(d, ["./asr.sh", "--python", PYTHON, "--stage", "2", "--stop_stage", "3",
                   "--train_set", "handmade", "--valid_set", "handmade", "--test_sets", "",
                   "--token_type", "char", "--nj", "2"], timeout=300)
    out = ok(proc)
    expect = {
        "utt_missing": "missing_audio",
        "utt_corrupt": "unreadable_audio",
        "utt_empty_text": "empty_transcript",
        "utt_no_text": "no_transcript",
        "utt_too_short": "too_short",
    }
    for utt, reason in expect.items():
        assert re.search(rf"dropping utterance '{utt}': {reason}: \S", out), (utt, out)
    assert "does_not_exist.wav" in out
    assert ("[handmade] kept 3 of 8 utterances" in out
            and "dropped 5: no_transcript=1, empty_transcript=1, missing_audio=1, "
                "unreadable_audio=1, too_short=1" in out), out
    raw = d / "dump/raw/handmade"
    kept = read_kaldi(raw / "wav.scp")
    assert sorted(kept) == ["utt_good_22k", "utt_good_8k_stereo", "utt_good_pipe"]
    assert sorted(read_kaldi(raw / "text")) == sorted(kept)
    nsamp = read_kaldi(raw / "utt2num_samples")
    assert nsamp == {"utt_good_22k": "8000", "utt_good_8k_stereo": "16000",
                     "utt_good_pipe": "11200"}
    for utt, path in kept.items():
        info = sf.info(str(d / path))
        assert (info.samplerate, info.channels, info.frames) == (16000, 1, int(nsamp[utt]))
    assert sorted(read_kaldi(raw / "dropped.txt")) == sorted(expect)
    # the next stage ran on what was kept
    assert "Stage 3:" in out
    tokens = (d / "data/token_list/char/tokens.txt").read_text().split()
    assert tokens[:2] == ["<blank>", "<unk>"] and tokens[-1] == "<sos/eos>"
    assert "<space>" in tokens and "W" in tokens and "B" not in tokens  # BROKEN FILE dropped


def cut_short(src: Path, dst: Path, keep: float):
    """A copy of ``src`` holding only its first ``keep`` share of bytes (header unchanged)."""
    data = src.read_bytes()
    dst.write_bytes(data[: int(len(data) * keep)])


def test_stage2_drops_truncated_audio(tmp_path):
    """Files whose header declares more samples than they hold (an interrupted copy) are
    dropped as truncated_audio, for WAV (libsndfile reads the part that is there) and FLAC
    (libsndfile fails part-way); intact files, and a streamed WAV whose header declares no
    length, are kept whole."""
    audio = tmp_path / "audio"
    audio.mkdir()
    write_wav(audio / "a.wav", 2.0, 16000)
    x, _ = sf.read(str(audio / "a.wav"))
    sf.write(str(audio / "a.flac"), x, 16000)
    cut_short(audio / "a.wav", audio / "cut.wav", 0.5)
    cut_short(audio / "a.flac", audio / "cut.flac", 0.6)
    streamed = bytearray((audio / "a.wav").read_bytes())  # as ffmpeg writes to a pipe
    i = streamed.index(b"data")
    streamed[4:8] = streamed[i + 4:i + 8] = b"\xff\xff\xff\xff"
    (audio / "streamed.wav").write_bytes(bytes(streamed))
    entries = [
        ("utt_wav", str(audio / "a.wav"), "HELLO"),
        ("utt_flac", str(audio / "a.flac"), "HELLO"),
        ("utt_streamed", f"cat {audio / 'streamed.wav'} |", "HELLO"),
        ("utt_cut_wav", str(audio / "cut.wav"), "HELLO"),
        ("utt_cut_flac", str(audio / "cut.flac"), "HELLO"),
        ("utt_cut_pipe", f"cat {audio / 'cut.wav'} |", "HELLO"),
    ]
    d = handmade_recipe(tmp_path, entries)
    out = ok(run(d, ["./asr.sh", "--python", PYTHON, "--stage", "2", "--stop_stage", "2",
                     "--train_set", "handmade", "--valid_set", "handmade", "--test_sets", "",
                     "--nj", "1"], timeout=120))
    raw = d / "dump/raw/handmade"
    dropped = {line.split("\t")[0]: line.split("\t")[1:]
               for line in (raw / "dropped.txt").read_text().splitlines()}
    assert sorted(dropped) == ["utt_cut_flac", "utt_cut_pipe", "utt_cut_wav"]
    for utt, (reason, detail) in dropped.items():
        assert reason == "truncated_audio", (utt, reason, detail)
        assert re.search(r"the header declares 32000 frames \(2\.000 s\), only \d+ \(\S+ s\) could be read",
                         detail), detail
        assert f"dropping utterance '{utt}': truncated_audio: " in out
    assert "cut.wav: the header declares" in dropped["utt_cut_wav"][1]
    assert "[handmade] kept 3 of 6 utterances" in out and "dropped 3: truncated_audio=3" in out
    assert read_kaldi(raw / "utt2num_samples") == {"utt_flac": "32000", "utt_streamed": "32000", "utt_wav": "32000"}


def test_stage2_failure_names_stage_and_log(tmp_path):
    d = handmade_recipe(tmp_path, [("utt_missing", str(tmp_path / "nope.wav"), "HELLO")])
    proc = run(d, ["./asr.sh", "--python", PYTHON, "--stage", "2", "--stop_stage", "8",
                   "--train_set", "handmade", "--valid_set", "handmade", "--test_sets", "handmade",
                   "--asr_config", "conf/none.yaml"], timeout=120)
    assert proc.returncode != 0
    m = re.search(r"ERROR: stage 2 \(format data[^)]*\) failed: .*\n.*\n.*log: +(\S+)", proc.stdout)
    assert m, proc.stdout
    log = d / m.group(1)
    assert log.is_file() and "no usable utterance" in log.read_text()
    assert "Stage 3:" not in proc.stdout


def test_unknown_option_is_rejected(tmp_path):
    d = handmade_recipe(tmp_path, [])
    proc = run(d, ["./asr.sh", "--python", PYTHON, "--no_such_option", "1"], timeout=60)
    assert proc.returncode == 2
    assert "unknown option --no_such_option" in proc.stdout


# every asr.sh option with a type: (option, a wrong value, the start of the error)
TYPED_OPTIONS = [
    ("stage", "x", "--stage must be a non-negative integer, got 'x'"),
    ("stop_stage", "-1", "--stop_stage must be a non-negative integer"),
    ("ngpu", "1.0", "--ngpu must be a non-negative integer"),
    ("nj", "0", "--nj must be a positive integer, got '0'"),
    ("inference_nj", "two", "--inference_nj must be a positive integer"),
    ("nbpe", "1.5", "--nbpe must be a positive integer"),
    ("batch_size", "0", "--batch_size must be a positive integer"),
    ("analysis_max_utts", "-3", "--analysis_max_utts must be a positive integer"),
    ("asr_speech_fold_length", "8e2", "--asr_speech_fold_length must be a positive integer"),
    ("asr_text_fold_length", "0", "--asr_text_fold_length must be a positive integer"),
    ("min_wav_duration", "abc", "--min_wav_duration must be a number of seconds >= 0, got 'abc'"),
    ("max_wav_duration", "-1", "--max_wav_duration must be a number of seconds >= 0"),
    ("bpe_char_cover", "1.5", "--bpe_char_cover must be a number in (0, 1], got '1.5'"),
    ("bpe_char_cover", "0", "--bpe_char_cover must be a number in (0, 1]"),
    ("token_type", "word", "--token_type must be bpe or char, got 'word'"),
    ("bpemode", "word", "--bpemode must be unigram or bpe, got 'word'"),
    ("gpu_inference", "yes", "--gpu_inference must be true or false, got 'yes'"),
    ("dry_run", "1", "--dry_run must be true or false"),
    ("use_lm", "maybe", "--use_lm must be true or false"),
    ("use_streaming", "yes", "--use_streaming must be true or false, got 'yes'"),
    ("fs", "16x", "--fs must be a positive whole sampling rate"),
    ("fs", "0", "--fs must be a positive whole sampling rate"),
    ("fs", "16000.5", "--fs must be a positive whole sampling rate"),
]


def test_every_typed_option_of_asr_sh_is_tested():
    """Options whose default is a number or true/false, and those with a fixed set of values."""
    text = (TEMPLATE / "asr.sh").read_text()
    options = re.search(r"_options=\((.*?)\)", text, re.S).group(1).split()
    defaults = dict(re.findall(r"^(\w+)=(\S*)", text, re.M))
    typed = {o for o in options if re.fullmatch(r"[0-9.]+|true|false", defaults[o])}
    typed |= {"nj", "inference_nj", "fs", "token_type", "bpemode"}  # defaults computed or words
    assert typed == {o for o, _, _ in TYPED_OPTIONS}


@pytest.mark.parametrize("option, value, message", TYPED_OPTIONS, ids=[f"{o}={v}" for o, v, _ in TYPED_OPTIONS])
def test_wrong_typed_option_is_named(tmp_path, option, value, message):
    d = handmade_recipe(tmp_path, [])
    proc = run(d, ["./asr.sh", "--python", PYTHON, "--stage", "0", "--stop_stage", "0", f"--{option}", value],
               timeout=60)
    assert proc.returncode == 2, proc.stdout
    assert f"ERROR: {message}" in proc.stdout


@pytest.mark.parametrize(
    "options, message",
    [
        (["--min_wav_duration", "5", "--max_wav_duration", "2.5"],
         "--min_wav_duration 5 must not exceed --max_wav_duration 2.5"),
        (["--use_streaming", "true", "--batch_size", "2"],
         "--use_streaming true decodes one utterance at a time: --batch_size must be 1, got 2"),
    ],
)
def test_conflicting_options_are_refused(tmp_path, options, message):
    d = handmade_recipe(tmp_path, [])
    proc = run(d, ["./asr.sh", "--python", PYTHON, "--stage", "0", "--stop_stage", "0", *options], timeout=60)
    assert proc.returncode == 2
    assert f"ERROR: {message}" in proc.stdout


def test_numbers_in_their_written_forms_are_accepted(tmp_path):
    d = handmade_recipe(tmp_path, [])
    ok(run(d, ["./asr.sh", "--python", PYTHON, "--stage", "0", "--stop_stage", "0", "--min_wav_duration", "1e-1",
               "--max_wav_duration", ".5", "--fs", "8k", "--bpe_char_cover", "0.9995"], timeout=60))


def test_model_card_reads_null_moe_keys_as_their_defaults():
    """encoder_conf may give moe_macaron and router_groups as null (their defaults)."""
    sys.path.insert(0, str(TEMPLATE / "pyscripts"))
    import make_model_card

    def card(**conf):
        return "\n".join(make_model_card.architecture({"encoder": "omni_router_conformer", "encoder_conf": conf}))

    assert "macaron FFNs included" in card(macaron_style=True, moe_macaron=None)
    assert "macaron FFNs included" in card(macaron_style=True)
    assert "macaron FFNs included" not in card(macaron_style=True, moe_macaron=False)
    assert "macaron FFNs included" not in card(macaron_style=False)
    assert "share 1 router(s)" in card(router_groups=None) and "share 3 router(s)" in card(router_groups=3)


def test_model_card_names_every_family():
    sys.path.insert(0, str(TEMPLATE / "pyscripts"))
    import make_model_card

    def card(encoder, **conf):
        return "\n".join(make_model_card.architecture({"encoder": encoder, "encoder_conf": conf}))

    assert "Omni-router: all MoE FFNs share 1 router(s)" in card("omni_router_e_branchformer")
    assert "macaron FFNs included" in card("omni_router_e_branchformer", use_ffn=True, macaron_ffn=True)
    assert "Switch: every MoE FFN has its own router" in card("switch_contextual_block_conformer")
    assert "streaming: blocks of 40 frames, hop 16, look-ahead 16" in card(
        "omni_router_contextual_block_conformer", block_size=40, hop_size=16, look_ahead=16)
    assert "dense (no Mixture of Experts)" in card("e_branchformer")
    assert "Duo: each FFN slot takes a big, small or skip path per frame" in card("duo_e_branchformer")
