"""Tests of egs2/synth_en/asr1/local/data.sh (offline synthetic English ASR corpus).

They need the Debian packages named in local/data.sh (espeak-ng, flite, festival + voices, sox,
fortunes, fortunes-min, wordnet-base, pocketsphinx-testdata); `make test` installs them.
"""

import os
import re
import shutil
import subprocess
import sys
import wave
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "egs2" / "synth_en" / "asr1"
DATA_SH = RECIPE / "local" / "data.sh"
sys.path.insert(0, str(RECIPE / "local"))

TINY = ["--train_hours", "0.01", "--dev_utts", "5", "--test_utts", "5", "--seed", "7", "--nj", "2"]
SPLITS = ["train", "dev", "test_seen", "test_unseen_voice", "test_noisy", "test_tempo", "test_real"]
UNSEEN_PREFIXES = ("espeak-en-029-", "espeak-en-gb-x-gbclan-", "espeak-en-gb-x-gbcwmd-",
                   "flite-slt", "festival-")
NORM = re.compile(r"^[A-Z' ]+$")



def run_data_sh(cwd, args, env=None, bash="bash"):
    e = dict(os.environ)
    e["PYTHON"] = sys.executable
    if env:
        e.update(env)
    return subprocess.run([bash, str(DATA_SH)] + list(args), cwd=cwd, env=e,
                          capture_output=True, text=True, timeout=120)


def read_table(path):
    with open(path) as f:
        return [line.rstrip("\n").split(" ", 1) for line in f]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth_a")
    r = run_data_sh(root, TINY)
    assert r.returncode == 0, r.stdout + r.stderr
    return root, r.stdout


def test_splits_consistent_and_sorted(corpus):
    root, _ = corpus
    for split in SPLITS:
        d = root / "data" / split
        scp = read_table(d / "wav.scp")
        text = read_table(d / "text")
        u2s = read_table(d / "utt2spk")
        assert scp, split
        ids = [u for u, _ in scp]
        assert ids == sorted(ids), f"{split}: wav.scp not sorted"
        assert len(set(ids)) == len(ids)
        assert [u for u, _ in text] == ids and [u for u, _ in u2s] == ids, split
        for u, spk in u2s:
            assert u.startswith(spk), (split, u, spk)
        # Kaldi: sorting by speaker then utterance must give the same order
        assert sorted(u2s, key=lambda x: (x[1], x[0])) == u2s, split
        spk2utt = read_table(d / "spk2utt")
        assert sorted(u for _, us in spk2utt for u in us.split()) == ids
    n_test = len(read_table(root / "data" / "test_seen" / "text"))
    assert n_test == 5
    assert len(read_table(root / "data" / "dev" / "text")) == 5
    assert len(read_table(root / "data" / "test_real" / "text")) == 10


def test_wavs_16k_mono_nonempty(corpus):
    root, _ = corpus
    total = {}
    for split in SPLITS:
        for _, path in read_table(root / "data" / split / "wav.scp"):
            assert os.path.isabs(path)
            with wave.open(path, "rb") as w:
                assert w.getframerate() == 16000
                assert w.getnchannels() == 1
                assert w.getsampwidth() == 2
                assert w.getnframes() > 1600, path  # > 0.1 s
                total[split] = total.get(split, 0) + w.getnframes() / 16000
    assert 0.01 * 3600 <= total["train"] < 0.01 * 3600 + 15  # reaches the target, small overshoot
    assert (root / "downloads" / "synth_en" / "train").is_dir()


def test_transcripts_normalised(corpus):
    root, _ = corpus
    for split in SPLITS:
        for _, t in read_table(root / "data" / split / "text"):
            assert NORM.match(t) and "  " not in t and t == t.strip(), (split, t)
            if split != "test_real":
                assert 4 <= len(t.split()) <= 20


def test_heldout_sentences_and_voices(corpus):
    root, _ = corpus

    def texts(split):
        return {t for _, t in read_table(root / "data" / split / "text")}

    def spks(split):
        return {s for _, s in read_table(root / "data" / split / "utt2spk")}

    train = texts("train")
    for split in ["dev", "test_seen", "test_unseen_voice", "test_noisy", "test_tempo"]:
        assert not (texts(split) & train), split
    assert not (texts("test_seen") & texts("dev"))
    train_spk = spks("train") | spks("dev")
    assert not (spks("test_unseen_voice") & train_spk)
    assert all(s.startswith(UNSEEN_PREFIXES) for s in spks("test_unseen_voice"))
    for split in ["train", "dev", "test_seen", "test_noisy", "test_tempo"]:
        assert not any(s.startswith(UNSEEN_PREFIXES) for s in spks(split)), split


def test_same_seed_same_output_and_rerun_skips(corpus, tmp_path):
    root, _ = corpus
    r = run_data_sh(tmp_path, TINY)
    assert r.returncode == 0, r.stderr
    for split in SPLITS:
        for name in ["text", "utt2spk"]:
            assert (tmp_path / "data" / split / name).read_text() == \
                (root / "data" / split / name).read_text(), (split, name)
    # audio is deterministic too (seeded noise, no sox dither)
    a = sorted((root / "downloads" / "synth_en" / "test_noisy").glob("*.wav"))
    b = sorted((tmp_path / "downloads" / "synth_en" / "test_noisy").glob("*.wav"))
    assert [p.name for p in a] == [p.name for p in b]
    assert all(x.read_bytes() == y.read_bytes() for x, y in zip(a, b))
    # same options again: skipped, outputs untouched
    before = (tmp_path / "data" / "train" / "text").read_text()
    r = run_data_sh(tmp_path, TINY)
    assert r.returncode == 0 and "skipping" in r.stdout, r.stdout + r.stderr
    assert (tmp_path / "data" / "train" / "text").read_text() == before


def test_missing_program_message(tmp_path):
    """PATH stripped of espeak-ng: non-zero exit, names the program and the apt-get line."""
    bash = shutil.which("bash")
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    for d in os.environ.get("PATH", "").split(os.pathsep):
        if not os.path.isdir(d):
            continue
        for name in os.listdir(d):
            src = os.path.join(d, name)
            if name == "espeak-ng" or (fake_bin / name).exists() or not os.access(src, os.X_OK):
                continue
            (fake_bin / name).symlink_to(src)
    r = run_data_sh(tmp_path, TINY, env={"PATH": str(fake_bin)}, bash=bash)
    assert r.returncode != 0
    assert "espeak-ng" in r.stderr
    apt = [ln for ln in r.stderr.splitlines() if "apt-get install" in ln]
    assert apt and "espeak-ng" in apt[0].split("install", 1)[1], r.stderr
    assert not (tmp_path / "data").exists()


def test_missing_text_package_message(tmp_path):
    r = run_data_sh(tmp_path, TINY, env={"SYNTH_EN_WORDNET_DIR": str(tmp_path / "nowhere")})
    assert r.returncode != 0
    apt = [ln for ln in r.stderr.splitlines() if "apt-get install" in ln]
    assert apt and "wordnet-base" in apt[0], r.stderr


def test_normalize_rules():
    import synth_text

    n = synth_text.normalize
    assert n("Mr. Smith didn't go to the `old' mill, did he?") == \
        "MISTER SMITH DIDN'T GO TO THE OLD MILL DID HE"
    assert n("Rock & roll -- is here to stay!") == "ROCK AND ROLL IS HERE TO STAY"
    assert n("I have 3 apples and two pears") is None  # digits: dropped
    assert n("The IBM machine was very fast indeed") is None  # acronym: dropped
    assert n("Too short") is None
    assert n(" ".join(["word"] * 21)) is None
    assert n("hello   world, this is fine") == "HELLO WORLD THIS IS FINE"


# every option of local/data.sh with a type: (option, wrong values, the error)
BAD_OPTIONS = [
    ("--train_hours", ["0", "-1", "inf", "nan"], "must be > 0"),
    ("--train_hours", ["x"], "invalid float value"),
    ("--dev_utts", ["0", "-5"], "must be >= 1"),
    ("--dev_utts", ["2.5"], "invalid int value"),
    ("--test_utts", ["0"], "must be >= 1"),
    ("--top_words", ["-1"], "must be >= 0"),
    ("--top_words", ["all"], "invalid int value"),
    ("--seed", ["1.5"], "invalid int value"),
    ("--nj", ["0"], "must be >= 1"),
]


def test_every_typed_option_is_tested():
    import synth_corpus

    typed = {a.option_strings[0] for a in synth_corpus.build_parser()._actions if a.type is not None}
    assert typed == {o for o, _, _ in BAD_OPTIONS}


@pytest.mark.parametrize("option, values, message", BAD_OPTIONS, ids=[f"{o}-{m}" for o, _, m in BAD_OPTIONS])
def test_bad_option_value_is_named(option, values, message, capsys):
    import synth_corpus

    for value in values:
        with pytest.raises(SystemExit) as e:
            synth_corpus.parse_args([option, value])
        assert e.value.code == 2
        assert f"argument {option}: {message}" in capsys.readouterr().err
