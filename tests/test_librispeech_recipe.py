"""The LibriSpeech-100 recipe on a tiny fake LibriSpeech tree (real layout, generated flac)."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import soundfile as sf

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "egs2" / "librispeech_100" / "asr1"
WORDS = "THE A OF AND TO IN HE WAS THAT IT HIS HAD WITH AS FOR YOU".split()


def fake_librispeech(root: Path, seed=0):
    """Two speakers x one chapter x 3 utterances per subset, as LibriSpeech lays them out."""
    rng = np.random.default_rng(seed)
    for s, subset in enumerate(["train-clean-100", "dev-clean", "dev-other", "test-clean", "test-other"]):
        for spk in (100 + 10 * s, 101 + 10 * s):
            chapter = root / subset / str(spk) / "2000"
            chapter.mkdir(parents=True)
            lines = []
            for i in range(3 if subset != "train-clean-100" else 6):
                utt = f"{spk}-2000-{i:04d}"
                audio = 0.1 * rng.standard_normal(int(rng.integers(12000, 24000)))
                sf.write(str(chapter / f"{utt}.flac"), audio.astype(np.float32), 16000, format="FLAC")
                lines.append(f"{utt} {' '.join(rng.choice(WORDS, size=int(rng.integers(2, 6))))}")
            (chapter / f"{spk}-2000.trans.txt").write_text("\n".join(lines) + "\n")
    return root


def recipe_copy(tmp: Path) -> Path:
    d = tmp / "egs2" / "librispeech_100" / "asr1"
    d.mkdir(parents=True)
    for name in ("run.sh", "asr.sh", "pyscripts", "conf", "local", "db.sh"):
        (d / name).symlink_to(RECIPE / name)
    return d


def run(d, *args):
    return subprocess.run(["./run.sh", "--python", sys.executable, *args], cwd=d, capture_output=True, text=True)


def test_stages_1_to_5_on_a_fake_tree(tmp_path):
    corpus = fake_librispeech(tmp_path / "LibriSpeech")
    d = recipe_copy(tmp_path)
    proc = run(
        d,
        "--local_data_opts", f"--librispeech_dir {corpus}",
        "--asr_config", "conf/tiny/train_asr_omni_router_conformer.yaml",
        "--asr_args", "--max_epoch 1",
        "--nbpe", "30",
        "--nj", "2",
        "--stop_stage", "5",
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    wav_scp = (d / "data" / "train_clean_100" / "wav.scp").read_text().splitlines()
    assert len(wav_scp) == 12 and wav_scp[0].startswith("100-2000-0000 ")
    utt2spk = (d / "data" / "train_clean_100" / "utt2spk").read_text().splitlines()
    assert utt2spk[0] == "100-2000-0000 100-2000"  # speaker = SPEAKER-CHAPTER
    assert len((d / "data" / "dev" / "text").read_text().splitlines()) == 12  # dev-clean + dev-other
    for s in ("test_clean", "test_other", "dev_clean", "dev_other"):
        assert (d / "data" / s / "text").is_file()
    assert len((d / "dump" / "raw" / "train_clean_100" / "wav.scp").read_text().splitlines()) == 12
    assert list((d / "data" / "token_list").glob("bpe_*/tokens.txt"))
    exps = [p for p in (d / "exp").glob("asr_*") if not p.name.startswith("asr_stats")]
    assert len(exps) == 1 and (exps[0] / "1epoch.pth").is_file()
    assert "encoder: omni_router_conformer" in (exps[0] / "config.yaml").read_text()


def test_missing_corpus_says_where_to_put_it(tmp_path):
    d = recipe_copy(tmp_path)
    proc = run(d, "--local_data_opts", f"--librispeech_dir {tmp_path / 'nowhere'}", "--stop_stage", "1")
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    assert "LibriSpeech subsets not found" in out and "train-clean-100" in out and "openslr" in out
