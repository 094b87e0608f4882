"""ESPnet's own tools find our encoders and model through the installed hook alone.

Every command runs in a fresh process of the ``installed_wheel`` venv (conftest.py): our
package is importable only from that venv's site-packages, nothing imports it but the hook,
and the commands are ESPnet's modules (``espnet2.bin.asr_train``, ``asr_inference``,
``pack``), espnet_model_zoo's downloader and ``torch.distributed.run``.  The model is the
session's ``tiny_omni``, which ESPnet's ``asr_train`` trained the same way.
"""
import json
import os
import re
import socket
import subprocess

import pytest
import torch
import yaml

from installs import NO_HOOK_ENV
from test_train_integration import epoch_lines
from tiny_asr_data import ROOT, run, train_args, write_data

DECODE = ["--beam_size", "2", "--ctc_weight", "0.3"]
# Decodes every utterance of a wav.scp with a model loaded the way ESPnet model cards
# show it: espnet_model_zoo's downloader unpacks the zip, Speech2Text builds the model.
ZOO_SCRIPT = """
import json, sys, soundfile
from espnet_model_zoo.downloader import ModelDownloader
from espnet2.bin.asr_inference import Speech2Text
cache, zip_path, wav_scp = sys.argv[1:]
speech2text = Speech2Text(**ModelDownloader(cache).download_and_unpack(zip_path), beam_size=2, ctc_weight=0.3)
hyps = {utt: speech2text(soundfile.read(path)[0])[0][0] for utt, path in (l.split() for l in open(wav_scp))}
print(json.dumps({"hyps": hyps, "model": type(speech2text.asr_model).__name__,
                  "encoder": type(speech2text.asr_model.encoder).__name__}))
"""


def in_venv(installed_wheel, cmd, log, **env):
    """Run ``cmd`` (``python`` = the venv's interpreter) in the venv's fresh environment."""
    cmd = [installed_wheel["python"] if c == "python" else c for c in cmd]
    return run(cmd, log, env={**installed_wheel["env"], **env}, cwd=installed_wheel["cwd"])


def captured_in_venv(installed_wheel, cmd, **env):
    """Like :func:`in_venv`, but returns the ``CompletedProcess`` with stdout and stderr apart."""
    cmd = [installed_wheel["python"] if c == "python" else c for c in cmd]
    return subprocess.run(cmd, capture_output=True, text=True, env={**installed_wheel["env"], **env},
                          cwd=installed_wheel["cwd"])


def hyps_of(text_file):
    with open(text_file) as f:
        return dict(line.rstrip("\n").partition(" ")[::2] for line in f)


@pytest.fixture(scope="module")
def decoded(installed_wheel, tiny_omni, tmp_path_factory):
    """``python -m espnet2.bin.asr_inference`` on the tiny model; returns its 1-best texts."""
    data, exp = tiny_omni
    out = tmp_path_factory.mktemp("espnet_decode")
    in_venv(
        installed_wheel,
        ["python", "-m", "espnet2.bin.asr_inference",
         "--asr_train_config", os.path.join(exp, "config.yaml"), "--asr_model_file", os.path.join(exp, "1epoch.pth"),
         "--data_path_and_name_and_type", f"{data}/wav.scp,speech,sound", "--output_dir", str(out / "decode"),
         "--ngpu", "0", "--batch_size", "1", *DECODE],
        str(out / "decode.log"),
    )
    return hyps_of(out / "decode" / "1best_recog" / "text")


def test_asr_train_builds_our_encoder_and_model(tiny_omni):
    data, exp = tiny_omni
    with open(os.path.join(exp, "config.yaml")) as f:
        config = yaml.safe_load(f)
    assert (config["encoder"], config["model"]) == ("omni_router_conformer", "moe_espnet")
    assert config["encoder_conf"]["num_experts"] == 4
    with open(os.path.join(os.path.dirname(exp), "train.log")) as f:
        epoch = next(line for line in f if "1epoch results" in line)
    assert re.search(r"moe_lb_loss=[0-9.]+", epoch) and "moe3_entropy=" in epoch  # MoEASRModel's stats
    state = torch.load(os.path.join(exp, "1epoch.pth"), map_location="cpu")
    assert [k for k in state if "router" in k] == ["encoder.routers.0.weight"]  # Omni: one shared router


def test_asr_inference_decodes_every_utterance(tiny_omni, decoded):
    data, _ = tiny_omni
    with open(os.path.join(data, "wav.scp")) as f:
        assert sorted(decoded) == sorted(line.split()[0] for line in f)
    assert any(decoded.values())  # the trained model emits tokens: the comparison below means something


def test_pack_and_model_zoo_load_transcribe_like_asr_inference(installed_wheel, tiny_omni, decoded, tmp_path):
    data, exp = tiny_omni
    zip_path = str(tmp_path / "asr_model.zip")
    in_venv(
        installed_wheel,
        ["python", "-m", "espnet2.bin.pack", "asr", "--asr_train_config", os.path.join(exp, "config.yaml"),
         "--asr_model_file", os.path.join(exp, "1epoch.pth"), "--outpath", zip_path],
        str(tmp_path / "pack.log"),
    )
    out = captured_in_venv(
        installed_wheel, ["python", "-c", ZOO_SCRIPT, str(tmp_path / "zoo_cache"), zip_path, os.path.join(data, "wav.scp")]
    )
    assert out.returncode == 0, out.stderr[-3000:]
    loaded = json.loads(out.stdout.strip().splitlines()[-1])
    assert (loaded["model"], loaded["encoder"]) == ("MoEASRModel", "OmniRouterConformerEncoder")
    assert loaded["hyps"] == decoded


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ddp_asr_train(installed_wheel, data, config, exp, log, *extra):
    """ESPnet's ``asr_train`` in 2 gloo DDP workers started by ``torch.distributed.run``; its log."""
    return in_venv(
        installed_wheel,
        ["python", "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
         "-m", "espnet2.bin.asr_train", *train_args(data, config, exp, "--max_epoch", "1", *extra),
         "--multiprocessing_distributed", "false", "--dist_backend", "gloo"],
        log,
    )


def test_ddp_two_cpu_processes_through_torch_distributed_run(installed_wheel, tmp_path):
    """gloo DDP, 2 workers that torch.distributed.run starts with ESPnet's own module; 64 experts
    for ~2x25 frames per step, so most experts get no frame in every step: stacked expert weights
    keep DDP from seeing unused parameters."""
    data = write_data(str(tmp_path / "data"), num_utts=8)
    config = os.path.join(ROOT, "conf", "tiny", "train_asr_switch_conformer.yaml")
    exp = str(tmp_path / "exp")
    log = ddp_asr_train(installed_wheel, data, config, exp, str(tmp_path / "ddp.log"), "--encoder_conf", "num_experts=64")
    assert "find_unused_parameters" not in log
    assert re.search(r"\[[^\]]*:0/2\]", log)  # ESPnet tags rank 0's log lines "[host:0/2]" (rank/world)
    with open(os.path.join(exp, "config.yaml")) as f:
        config = yaml.safe_load(f)
    assert (config["encoder"], config["encoder_conf"]["num_experts"]) == ("switch_conformer", 64)
    assert os.path.exists(os.path.join(exp, "1epoch.pth"))
    line = next(l for l in log.splitlines() if "1epoch results" in l)
    assert "moe_lb_loss=" in line
    assert [l.split(":")[0] for l in epoch_lines(log)] == ["[ASR] epoch 1/1"]  # rank 0's line only


PRINT_CONFIG = ["python", "-m", "espnet2.bin.asr_train", "--print_config",
                "--encoder", "omni_router_conformer", "--model", "moe_espnet"]


def test_print_config_lists_our_options(installed_wheel):
    out = captured_in_venv(installed_wheel, PRINT_CONFIG)
    assert out.returncode == 0, out.stderr[-3000:]
    config = yaml.safe_load(out.stdout)
    assert config["encoder"] == "omni_router_conformer"
    assert {"num_experts", "router_groups", "capacity_factor", "moe_macaron"} <= set(config["encoder_conf"])
    assert {"moe_aux_weight", "moe_zloss_weight"} <= set(config["model_conf"])


def test_switched_off_hook_leaves_espnet_as_it_was(installed_wheel):
    out = captured_in_venv(installed_wheel, PRINT_CONFIG, **{NO_HOOK_ENV: "1"})
    assert out.returncode == 2  # argparse's usage error
    assert "argument --encoder: invalid choice: 'omni_router_conformer'" in out.stderr
