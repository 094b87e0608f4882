"""A whole model exported by ``espnet_omnirouter.bin.export_onnx`` and decoded by
``espnet_omnirouter_onnx.Speech2Text`` (onnxruntime, numpy) gives ESPnet's ``Speech2Text`` results."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import soundfile
import torch
import yaml

import espnet_omnirouter  # noqa: F401  (registers our classes)
from espnet2.bin.asr_inference import Speech2Text

from espnet_omnirouter.export.frontend import FrontendForExport
from espnet_omnirouter.export.model import export_asr_model, unsupported_model
from espnet_omnirouter.hub import load_asr_model
from espnet_omnirouter_onnx import Speech2Text as OnnxSpeech2Text
from espnet_omnirouter_onnx import beam_search
from tiny_asr_data import ROOT, run

# Decoding options: pre-beam on (beam 3: int(1.5 * 3) = 4 < 7 tokens) and off (beam 5: 7),
# a length bonus, attention only, and length limits.
OPTIONS = [
    {"beam_size": 3, "ctc_weight": 0.3},
    {"beam_size": 5, "ctc_weight": 0.3, "penalty": 0.5},
    {"beam_size": 4, "ctc_weight": 0.0},
    {"beam_size": 3, "ctc_weight": 0.5, "maxlenratio": 0.3, "minlenratio": 0.1},
]


@pytest.fixture(scope="module")
def exported(tiny_omni, tmp_path_factory):
    """The session's tiny Omni-router Conformer (trained by ESPnet's asr_train) exported by our CLI."""
    data, exp = tiny_omni
    out = str(tmp_path_factory.mktemp("onnx") / "model")
    log = str(tmp_path_factory.mktemp("onnx_log") / "export.log")
    run([sys.executable, "-m", "espnet_omnirouter.bin.export_onnx", "--model", exp, "--out", out], log)
    return data, exp, out


def utterances(data):
    with open(os.path.join(data, "wav.scp")) as f:
        for line in f:
            utt, path = line.split()
            yield utt, soundfile.read(path, dtype="float32")[0]


def test_export_writes_the_graphs_and_their_config(exported):
    _, exp, out = exported
    assert sorted(os.listdir(out)) == ["config.yaml", "ctc.onnx", "decoder.onnx", "encoder.onnx", "frontend.onnx"]
    with open(os.path.join(out, "config.yaml")) as f:
        config = yaml.safe_load(f)
    with open(os.path.join(exp, "config.yaml")) as f:
        train_config = yaml.safe_load(f)
    assert config["token"]["list"] == train_config["token_list"]
    assert config["encoder"]["class"] == "OmniRouterConformerEncoder"
    assert config["decoder"]["n_blocks"] == train_config["decoder_conf"]["num_blocks"]


def decode_noting_ties(speech2text, wav, monkeypatch):
    """Decode ``wav``; also True when a top-k of the search had equal scores at its cut or
    among the kept candidates: which of them torch's ``topk`` keeps first is unspecified, so
    such an utterance is not compared.  (Ties come from candidates no prefix of the frames can
    reach: their CTC score is ``LOGZERO``, -1e10, and float32 loses the other scores beside it.)"""
    ties = []
    flat, rows = beam_search._topk_flat, beam_search._topk_rows

    def tied(values: np.ndarray, k: int) -> bool:
        top = np.sort(values)[::-1][: k + 1]
        return bool(len(np.unique(top)) < len(top))

    def topk_flat(scores, k):
        ties.append(tied(scores.reshape(-1), k))
        return flat(scores, k)

    def topk_rows(scores, k):
        ties.extend(tied(row, k) for row in scores)
        return rows(scores, k)

    with monkeypatch.context() as m:
        m.setattr(beam_search, "_topk_flat", topk_flat)
        m.setattr(beam_search, "_topk_rows", topk_rows)
        return speech2text(wav), any(ties)


@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: "-".join(f"{k}{v}" for k, v in o.items()))
def test_nbest_equals_espnet_speech2text(exported, options, monkeypatch):
    data, exp, out = exported
    nbest = options["beam_size"]
    ref = Speech2Text(os.path.join(exp, "config.yaml"), os.path.join(exp, "1epoch.pth"), nbest=nbest, **options)
    got = OnnxSpeech2Text(out, nbest=nbest, **options)
    # each utterance 4 times over (2.4-4.8 s): in 0.6-1.2 s this barely trained decoder's long
    # hypotheses outgrow the frames, so that nearly every search meets the ties described above
    steps, compared, utts = 0, 0, [(utt, np.tile(wav, 4)) for utt, wav in utterances(data)]
    for utt, wav in utts:
        have, tie = decode_noting_ties(got, wav, monkeypatch)
        if tie:
            continue
        want = ref(wav)
        assert [r[2] for r in have] == [r[2] for r in want], utt
        assert [r[0] for r in have] == [r[0] for r in want], utt
        np.testing.assert_allclose([h[3].score for h in have], [float(r[3].score) for r in want], rtol=1e-4, atol=1e-3)
        assert [h[3].yseq for h in have] == [tuple(r[3].yseq.tolist()) for r in want], utt
        steps = max(steps, max(len(h[3].yseq) for h in have))
        compared += 1
    assert compared >= len(utts) // 2, f"{compared} of {len(utts)} utterances compared"
    assert steps > 3  # the searches ran several steps, not only <sos> <eos>


def test_greedy_ctc_and_features_equal_pytorch(exported):
    data, exp, out = exported
    asr_model, _ = load_asr_model(exp)
    got = OnnxSpeech2Text(out)
    frontend = FrontendForExport(asr_model.frontend, asr_model.normalize).eval()
    for utt, wav in utterances(data):
        speech = torch.from_numpy(wav)[None]
        lengths = torch.tensor([len(wav)])
        with torch.no_grad():
            feats, feats_len = asr_model._extract_feats(speech, lengths)
            feats, _ = asr_model.normalize(feats, feats_len)
            ours, ours_len = frontend(speech, lengths)
            enc, _ = asr_model.encode(speech, lengths)
            best = asr_model.ctc.argmax(enc)[0]
        assert ours_len.tolist() == feats_len.tolist()
        np.testing.assert_allclose(ours.numpy(), feats.numpy(), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(got.encode(wav), enc[0].numpy(), rtol=1e-4, atol=1e-4)
        merged = torch.unique_consecutive(best)
        assert got.greedy_ctc(wav) == [t for t in merged.tolist() if t != asr_model.blank_id], utt


def test_runtime_imports_neither_torch_nor_espnet(exported, installed_wheel, tmp_path):
    """Decoding with the installed wheel's ``espnet_omnirouter_onnx`` loads no torch, ESPnet or
    ``espnet_omnirouter`` module (the wheel carries the runtime package)."""
    data, _, out = exported
    wav = next(utterances(data))[1]
    np.save(tmp_path / "wav.npy", wav)
    code = (
        "import sys, json, numpy as np\n"
        "import espnet_omnirouter_onnx\n"
        "from espnet_omnirouter_onnx import Speech2Text\n"
        f"text = Speech2Text({out!r}, beam_size=3, ctc_weight=0.3)(np.load({str(tmp_path / 'wav.npy')!r}))[0][0]\n"
        "print(json.dumps({'text': text, 'file': espnet_omnirouter_onnx.__file__, 'loaded': sorted(m for m in "
        "sys.modules if m.split('.')[0] in ('torch', 'espnet', 'espnet2', 'espnet_omnirouter'))}))\n"
    )
    proc = subprocess.run([installed_wheel["python"], "-c", code], capture_output=True, text=True,
                          env=installed_wheel["env"], cwd=installed_wheel["cwd"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["file"].startswith(installed_wheel["site"])
    assert result["loaded"] == []
    assert result["text"] == OnnxSpeech2Text(out, beam_size=3, ctc_weight=0.3)(wav)[0][0]


def test_streaming_model_is_refused_by_name_and_nothing_is_written(exported, tmp_path):
    from espnet2.tasks.asr import ASRTask

    _, exp, _ = exported
    with open(os.path.join(exp, "config.yaml")) as f:
        config = yaml.safe_load(f)
    with open(os.path.join(ROOT, "conf", "tiny", "train_asr_omni_router_contextual_block_conformer.yaml")) as f:
        streaming = yaml.safe_load(f)
    config.update(encoder=streaming["encoder"], encoder_conf=streaming["encoder_conf"])
    streaming_exp = tmp_path / "exp"
    streaming_exp.mkdir()
    with open(streaming_exp / "config.yaml", "w") as f:
        yaml.safe_dump(config, f)
    model, _ = ASRTask.build_model_from_file(str(streaming_exp / "config.yaml"), None, "cpu")
    torch.save(model.state_dict(), streaming_exp / "1epoch.pth")
    out = tmp_path / "onnx"
    proc = subprocess.run([sys.executable, "-m", "espnet_omnirouter.bin.export_onnx", "--model", str(streaming_exp),
                           "--out", str(out)], capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=ROOT))
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "streaming (contextual-block) encoder" in proc.stderr
    assert not out.exists()


def test_unsupported_models_name_the_key(exported, tmp_path):
    _, exp, _ = exported
    asr_model, train_args_ = load_asr_model(exp)
    assert unsupported_model(asr_model, "char") is None
    assert "not an ESPnet ASR model" in unsupported_model(torch.nn.Linear(2, 2), "char")
    assert "token_type: 'hugging_face'" in unsupported_model(asr_model, "hugging_face")
    asr_model.preencoder = torch.nn.Identity()
    assert unsupported_model(asr_model, "char").startswith("preencoder:")
    asr_model.preencoder = None
    asr_model.normalize = torch.nn.Identity()
    assert unsupported_model(asr_model, "char").startswith("normalize: Identity")
    with pytest.raises(ValueError, match="normalize: Identity"):
        export_asr_model(asr_model, train_args_, str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_runtime_errors_name_the_problem(exported, tmp_path):
    _, _, out = exported
    with pytest.raises(FileNotFoundError, match="no config.yaml"):
        OnnxSpeech2Text(str(tmp_path))
    (tmp_path / "config.yaml").write_text("format: something_else\n")
    with pytest.raises(ValueError, match="format must be"):
        OnnxSpeech2Text(str(tmp_path))
    with pytest.raises(ValueError, match="ctc_weight must be in"):
        OnnxSpeech2Text(out, ctc_weight=1.5)
    with pytest.raises(ValueError, match="1-D array"):
        OnnxSpeech2Text(out)(np.zeros((2, 16000), np.float32))


def test_asr_inference_writes_espnets_files(exported, tmp_path):
    data, _, out = exported
    decode = tmp_path / "decode.yaml"
    decode.write_text("beam_size: 3\nctc_weight: 0.3\nlm_weight: 0.6\n")  # lm_weight: no LM, as in ESPnet
    out_dir = tmp_path / "decode"
    run([sys.executable, "-m", "espnet_omnirouter_onnx.asr_inference", "--model_dir", out, "--config", str(decode),
         "--data_path_and_name_and_type", f"{data}/wav.scp,speech,sound", "--output_dir", str(out_dir)],
        str(tmp_path / "decode.log"))
    speech2text = OnnxSpeech2Text(out, beam_size=3, ctc_weight=0.3)
    want = {utt: speech2text(wav)[0] for utt, wav in utterances(data)}
    lines = {f: (out_dir / "1best_recog" / f).read_text().splitlines() for f in ("text", "token_int", "score")}
    assert [line.split(maxsplit=1)[0] for line in lines["text"]] == list(want)
    for utt, text, token_int in zip(want, lines["text"], lines["token_int"]):
        assert text == f"{utt} {want[utt][0]}"
        assert token_int.split()[1:] == [str(t) for t in want[utt][2]]
    rtf = json.loads((out_dir / "rtf.json").read_text())
    assert rtf["utterances"] == len(want) and rtf["rtf"] > 0


@pytest.mark.parametrize("config, scp_line, message", [
    ("beam_size: 3\nlm_train_config: lm.yaml\n", None, "lm_train_config: not options of the ONNX runtime"),
    (None, "utt1 sox a.wav -t wav - |", "wav.scp:1: expected '<utt> <audio file>'"),
])
def test_asr_inference_names_bad_input(exported, tmp_path, config, scp_line, message):
    data, _, out = exported
    args = ["--model_dir", out, "--output_dir", str(tmp_path / "decode")]
    if config is not None:
        (tmp_path / "decode.yaml").write_text(config)
        args += ["--config", str(tmp_path / "decode.yaml")]
    scp = f"{data}/wav.scp"
    if scp_line is not None:
        scp = str(tmp_path / "wav.scp")
        (tmp_path / "wav.scp").write_text(scp_line + "\n")
    proc = subprocess.run([sys.executable, "-m", "espnet_omnirouter_onnx.asr_inference", *args,
                           "--data_path_and_name_and_type", f"{scp},speech,sound"],
                          capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=ROOT))
    assert proc.returncode == 2
    assert message in proc.stderr
    assert not (tmp_path / "decode").exists()
