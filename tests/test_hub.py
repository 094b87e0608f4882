"""Pack a tiny trained model and load it back through the one-line loader."""
import json
import os
import re
import subprocess
import zipfile

import pytest
import torch

from tiny_asr_data import PYTHON, ROOT, run

# Runs in a fresh Python process: nothing is registered beforehand except what the loader
# does.  Decodes every utterance with each model given (zip, unpacked dir, exp dir).
DECODE_SCRIPT = """
import json, sys, soundfile
from espnet_omnirouter.hub import load_speech2text
cache, wav_scp, models = sys.argv[1], sys.argv[2], sys.argv[3:]
utts = [line.split() for line in open(wav_scp)]
out = []
for model in models:
    s2t = load_speech2text(model, cache_dir=cache, beam_size=2, ctc_weight=0.3, device="cpu")
    out.append({utt: s2t(soundfile.read(path)[0])[0][0] for utt, path in utts})
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def packed(tiny_omni, tmp_path_factory):
    """The tiny Omni-router model, packed; returns (data, exp, zip)."""
    data, exp = tiny_omni
    tmp = tmp_path_factory.mktemp("hub")
    zip_path = str(tmp / "model.zip")
    run(
        [PYTHON, "-m", "espnet2.bin.pack", "asr", "--asr_train_config", os.path.join(exp, "config.yaml"),
         "--asr_model_file", os.path.join(exp, "1epoch.pth"), "--outpath", zip_path],
        str(tmp / "pack.log"),
    )
    return data, exp, zip_path


def decode_in_fresh_process(cache, wav_scp, *models):
    out = subprocess.run(
        [PYTHON, "-c", DECODE_SCRIPT, cache, wav_scp, *models], capture_output=True, text=True, cwd=ROOT
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_zip_and_unpacked_dir_decode_like_the_exp_dir(packed, tmp_path):
    data, exp, zip_path = packed
    wav_scp = os.path.join(data, "wav.scp")
    unpacked = tmp_path / "unpacked"
    with zipfile.ZipFile(zip_path) as z:
        z.extractall(unpacked)
    from_zip, from_dir, before = decode_in_fresh_process(str(tmp_path / "cache"), wav_scp, zip_path, str(unpacked), exp)
    assert len(before) == 8
    assert any(before.values())  # a trained model emits tokens, so equality below means something
    assert from_zip == before
    assert from_dir == before
    # The zip was unpacked into the explicit cache dir, not into site-packages.
    assert any(f.endswith(".pth") for _, _, fs in os.walk(tmp_path / "cache") for f in fs)


def test_renamed_parameter_is_named_in_the_error(packed, tmp_path):
    from espnet_omnirouter.hub import load_asr_model

    _, exp, _ = packed
    state = torch.load(os.path.join(exp, "1epoch.pth"), map_location="cpu")
    state["encoder.routers.0.weight_renamed"] = state.pop("encoder.routers.0.weight")
    bad = tmp_path / "exp"
    bad.mkdir()
    torch.save(state, bad / "1epoch.pth")
    with open(os.path.join(exp, "config.yaml")) as f:
        (bad / "config.yaml").write_text(f.read())
    with pytest.raises(RuntimeError, match=r"missing keys \['encoder.routers.0.weight'\].*unexpected keys \['encoder.routers.0.weight_renamed'\]"):
        load_asr_model(str(bad))


def test_bad_model_argument_errors(tmp_path):
    from espnet_omnirouter.hub import resolve_model_files

    with pytest.raises(FileNotFoundError, match="no such zip or directory"):
        resolve_model_files(str(tmp_path / "nothing.zip"))
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(ValueError, match="expected a .zip"):
        resolve_model_files(str(tmp_path / "x.txt"))
    with pytest.raises(FileNotFoundError, match="neither meta.yaml"):
        resolve_model_files(str(tmp_path))


def test_local_looking_names_are_never_sent_to_the_hub(tmp_path, monkeypatch):
    from espnet_model_zoo.downloader import ModelDownloader

    from espnet_omnirouter.hub import resolve_model_files

    sent = []
    monkeypatch.setattr(ModelDownloader, "download_and_unpack", lambda self, name, **kw: sent.append(name) or {})
    monkeypatch.chdir(tmp_path)
    (tmp_path / "exp").mkdir()
    for name, why in [
        ("exp_typo/asr_model.zip", "it ends in .zip"),
        ("asr_model.ZIP", "it ends in .zip"),
        ("exp/asr_typo", "'exp/' is a directory here"),
        ("./exp_typo/asr", "it starts with '.'"),
        ("~nobody/model", "it starts with '~'"),
    ]:
        with pytest.raises(FileNotFoundError, match=rf"^{re.escape(name)}: no such zip or directory \(taken as a local path, not a Hugging Face id: {re.escape(why)}\)"):
            resolve_model_files(name, cache_dir=str(tmp_path / "cache"))
    assert sent == []
    resolve_model_files("owner/name", cache_dir=str(tmp_path / "cache"))  # a hub id still goes there
    assert sent == ["owner/name"]


def files_under(path):
    return sorted(str(p.relative_to(path)) for p in path.rglob("*")) if path.exists() else []


def test_bad_zip_is_named_and_leaves_nothing_in_the_cache(packed, tmp_path):
    from espnet_omnirouter.hub import resolve_model_files

    _, _, zip_path = packed
    data = open(zip_path, "rb").read()
    cache = tmp_path / "cache"
    truncated = tmp_path / "truncated.zip"
    truncated.write_bytes(data[: len(data) // 2])
    # a zip whose directory is intact but whose checkpoint bytes are damaged (extraction
    # fails part-way, after meta.yaml is out)
    with zipfile.ZipFile(zip_path) as z:
        pth = next(i for i in z.infolist() if i.filename.endswith(".pth"))
        assert z.infolist().index(pth) > [i.filename for i in z.infolist()].index("meta.yaml")
    damaged = bytearray(data)
    start = pth.header_offset + 30 + len(pth.filename) + len(pth.extra) + pth.compress_size // 2
    damaged[start:start + 64] = bytes(64)
    corrupt = tmp_path / "corrupt.zip"
    corrupt.write_bytes(bytes(damaged))
    for bad in (truncated, corrupt, corrupt):  # twice: the second call must not trust the first's leftovers
        with pytest.raises(ValueError, match=rf"^{re.escape(str(bad))}: cannot unpack this model zip \(BadZipFile: "):
            resolve_model_files(str(bad), cache_dir=str(cache))
        assert files_under(cache) == []
    files = resolve_model_files(zip_path, cache_dir=str(cache))
    assert os.path.isfile(files["asr_model_file"]) and os.path.isfile(files["asr_train_config"])
    assert resolve_model_files(zip_path, cache_dir=str(cache)) == files  # the finished unpack is reused
