"""The new encoder families through ESPnet's own entry points, in fresh processes of the
``installed_wheel`` venv (conftest.py: nothing imports our package but the installed hook):
2-process gloo DDP ``asr_train`` of a tiny Omni-router E-Branchformer, ``asr_train`` of a tiny
streaming Omni-router Conformer, ESPnet's ``asr_inference_streaming`` on it against
``Speech2TextStreaming`` fed in chunks, and our streaming decoder's errors."""
import json
import os
import re

import pytest
import yaml

from test_espnet_entry_points import captured_in_venv, ddp_asr_train, hyps_of, in_venv
from tiny_asr_data import ROOT, train_args, write_data

STREAMING_CONFIG = os.path.join(ROOT, "conf", "tiny", "train_asr_omni_router_contextual_block_conformer.yaml")
DECODE = ["--beam_size", "2", "--ctc_weight", "0.3", "--ngpu", "0", "--batch_size", "1"]
# Speech2TextStreaming fed 4000-sample chunks (0.25 s) of each utterance, as a live stream.
CHUNKS_SCRIPT = """
import json, sys, soundfile
from espnet2.bin.asr_inference_streaming import Speech2TextStreaming
config, model, wav_scp, chunk = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
s2t = Speech2TextStreaming(config, model, beam_size=2, ctc_weight=0.3)
hyps = {}
for utt, path in (line.split() for line in open(wav_scp)):
    speech = soundfile.read(path)[0]
    starts = list(range(0, len(speech), chunk))
    for start in starts[:-1]:
        s2t(speech[start:start + chunk], is_final=False)
    hyps[utt] = s2t(speech[starts[-1]:], is_final=True)[0][0]
print(json.dumps({"hyps": hyps, "encoder": type(s2t.asr_model.encoder).__name__}))
"""


@pytest.fixture(scope="module")
def tiny_streaming(installed_wheel, tmp_path_factory):
    """A tiny streaming Omni-router Conformer trained 1 epoch by ESPnet's ``asr_train``."""
    tmp = tmp_path_factory.mktemp("tiny_streaming")
    data = write_data(str(tmp / "data"), num_utts=8)
    exp = str(tmp / "exp")
    log = in_venv(installed_wheel, ["python", "-m", "espnet2.bin.asr_train",
                                    *train_args(data, STREAMING_CONFIG, exp, "--max_epoch", "1")], str(tmp / "train.log"))
    return data, exp, log


def test_ddp_trains_an_omni_router_e_branchformer(installed_wheel, tmp_path):
    data = write_data(str(tmp_path / "data"), num_utts=8)
    config = os.path.join(ROOT, "conf", "tiny", "train_asr_omni_router_e_branchformer.yaml")
    exp = str(tmp_path / "exp")
    log = ddp_asr_train(installed_wheel, data, config, exp, str(tmp_path / "ddp.log"))
    assert re.search(r"\[[^\]]*:0/2\]", log) and "find_unused_parameters" not in log
    with open(os.path.join(exp, "config.yaml")) as f:
        assert yaml.safe_load(f)["encoder"] == "omni_router_e_branchformer"
    line = next(l for l in log.splitlines() if "1epoch results" in l)
    assert "moe_lb_loss=" in line and "moe3_entropy=" in line  # 2 blocks x (macaron, second FFN)


def test_streaming_decoding_through_espnet_equals_chunked_speech2text(installed_wheel, tiny_streaming, tmp_path):
    data, exp, log = tiny_streaming
    assert "moe_lb_loss=" in next(l for l in log.splitlines() if "1epoch results" in l)
    config, model = os.path.join(exp, "config.yaml"), os.path.join(exp, "1epoch.pth")
    out = tmp_path / "decode"
    in_venv(
        installed_wheel,
        ["python", "-m", "espnet2.bin.asr_inference_streaming", "--asr_train_config", config, "--asr_model_file", model,
         "--data_path_and_name_and_type", f"{data}/wav.scp,speech,sound", "--output_dir", str(out),
         "--sim_chunk_length", "4000", *DECODE],
        str(tmp_path / "decode.log"),
    )
    espnet_hyps = hyps_of(out / "1best_recog" / "text")
    proc = captured_in_venv(installed_wheel, ["python", "-c", CHUNKS_SCRIPT, config, model, f"{data}/wav.scp", "4000"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    chunked = json.loads(proc.stdout.strip().splitlines()[-1])
    assert chunked["encoder"] == "OmniRouterContextualBlockConformerEncoder"
    assert len(espnet_hyps) == 8 and chunked["hyps"] == espnet_hyps
    assert any(espnet_hyps.values())  # the model emits tokens: the comparison means something


def test_our_streaming_decoder_logs_utterance_times(installed_wheel, tiny_streaming, tmp_path):
    data, exp, _ = tiny_streaming
    out = tmp_path / "decode"
    log = in_venv(
        installed_wheel,
        ["python", "-m", "espnet_omnirouter.bin.asr_inference_streaming",
         "--asr_train_config", os.path.join(exp, "config.yaml"), "--asr_model_file", os.path.join(exp, "1epoch.pth"),
         "--data_path_and_name_and_type", f"{data}/wav.scp,speech,sound", "--output_dir", str(out), *DECODE],
        str(tmp_path / "decode.log"),
    )
    assert len(hyps_of(out / "1best_recog" / "text")) == 8
    assert log.count("speech length") == 8 and log.count("best hypo") >= 8


@pytest.mark.parametrize(
    "edit, extra, message",
    [
        ("encoder", [], r"encoder: omni_router_conformer is not a streaming encoder"),
        ("hop_size", [], r"encoder_conf\.hop_size is missing: streaming decoding reads block_size, hop_size, look_ahead"),
        (None, ["--roe_samples", "2"], r"--roe_samples is not available in streaming decoding"),
    ],
)
def test_streaming_decoder_refuses_what_cannot_stream(installed_wheel, tiny_streaming, tmp_path, edit, extra, message):
    data, exp, _ = tiny_streaming
    with open(os.path.join(exp, "config.yaml")) as f:
        config = yaml.safe_load(f)
    if edit == "encoder":
        config["encoder"] = "omni_router_conformer"
    elif edit:
        del config["encoder_conf"][edit]
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    out = tmp_path / "decode"
    proc = captured_in_venv(
        installed_wheel,
        ["python", "-m", "espnet_omnirouter.bin.asr_inference_streaming", "--asr_train_config", str(path),
         "--asr_model_file", os.path.join(exp, "1epoch.pth"), "--data_path_and_name_and_type",
         f"{data}/wav.scp,speech,sound", "--output_dir", str(out), *DECODE, *extra],
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert re.search(message, proc.stderr), proc.stderr[-2000:]
    assert not out.exists()  # nothing written
