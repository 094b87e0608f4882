"""Train, decode and reload through our entry points on a tiny data set (CPU)."""
import glob
import os
import re
import sys

import pytest
import torch

import espnet_omnirouter  # noqa: F401  (a process that loads a model must register first)

from tiny_asr_data import PYTHON, ROOT, inference_args, run, train_args, write_data


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Train the tiny Switch Conformer 2 epochs; returns (data dir, exp dir, train log)."""
    tmp = tmp_path_factory.mktemp("train")
    data = write_data(str(tmp / "data"))
    exp = str(tmp / "exp")
    config = os.path.join(ROOT, "conf", "tiny", "train_asr_switch_conformer.yaml")
    log = run(
        [PYTHON, "-m", "espnet_omnirouter.bin.asr_train", *train_args(data, config, exp, "--max_epoch", "2")],
        str(tmp / "train.log"),
    )
    return data, exp, log


def test_training_log_has_aux_losses_and_usage_stats(trained):
    _, exp, log = trained
    for epoch in (1, 2):
        line = next(l for l in log.splitlines() if f"{epoch}epoch results" in l)
        for key in ("moe_lb_loss", "moe_z_loss", "loss_asr", "moe0_entropy", "moe3_max_frac", "moe3_drop_frac"):
            assert re.search(rf"\b{key}=[-0-9.e]+", line), (key, line)
        # Load balance E * sum f P is 1.0 at even use and at most E = 4 when collapsed: a sanity range.
        value = {k: float(re.search(rf"\b{k}=([-0-9.e+]+)", line).group(1)) for k in ("loss", "loss_asr", "moe_lb_loss", "moe_z_loss")}
        assert 0.9 <= value["moe_lb_loss"] <= 4.0
        # 4 MoE FFNs (2 blocks x macaron + FFN); weights 0.01 / 0.001 apply to each FFN's losses.
        expected = value["loss_asr"] + 4 * (0.01 * value["moe_lb_loss"] + 0.001 * value["moe_z_loss"])
        assert abs(value["loss"] - expected) < 2e-3, (value, expected)
    assert os.path.exists(os.path.join(exp, "2epoch.pth"))


def epoch_lines(log):
    """The console lines asr.sh's train_progress.py makes of a training log."""
    sys.path.insert(0, os.path.join(ROOT, "egs2", "TEMPLATE", "asr1", "pyscripts"))
    import train_progress

    progress = train_progress.Progress("ASR")
    return [line for line in map(progress.feed, log.splitlines()) if line]


def test_progress_lines_of_a_two_epoch_log(trained):
    _, _, log = trained
    lines = epoch_lines(log)
    assert len(lines) == 2, lines
    for epoch, line in enumerate(lines, 1):
        results = next(l for l in log.splitlines() if f"{epoch}epoch results" in l)
        loss = {p: float(re.search(rf"\[{p}\] (?:.*?, )?loss=([-0-9.e+]+)", results).group(1)) for p in ("train", "valid")}
        acc = float(re.search(r"\[valid\] .*?\bacc=([-0-9.e+]+)", results).group(1))
        m = re.match(rf"^\[ASR\] epoch {epoch}/2: train loss (\S+), valid loss (\S+), valid acc (\S+); epoch .+, (.+)$", line)
        assert m, line
        assert [float(v) for v in m.group(1, 2, 3)] == [loss["train"], loss["valid"], acc]
        if epoch == 2:
            assert m.group(4) == "done"
        else:
            assert re.fullmatch(r"about .+ left", m.group(4)), line


def test_checkpoint_reloads_strictly(trained):
    from espnet2.tasks.asr import ASRTask

    _, exp, _ = trained
    model, _ = ASRTask.build_model_from_file(os.path.join(exp, "config.yaml"), None, "cpu")
    state = torch.load(os.path.join(exp, "2epoch.pth"), map_location="cpu")
    model.load_state_dict(state, strict=True)
    assert type(model).__name__ == "MoEASRModel"
    assert sum("router" in k for k in state) == 4  # 2 blocks x (macaron + FFN), one router each


def test_decode_with_inference_entry_point(trained, tmp_path):
    data, exp, _ = trained
    model_file = sorted(glob.glob(os.path.join(exp, "*.pth")))[-1]
    out = str(tmp_path / "decode")
    run(
        [PYTHON, "-m", "espnet_omnirouter.bin.asr_inference",
         *inference_args(os.path.join(exp, "config.yaml"), model_file, data, out)],
        str(tmp_path / "decode.log"),
    )
    with open(os.path.join(out, "1best_recog", "text")) as f:
        hyps = dict(line.rstrip("\n").partition(" ")[::2] for line in f)
    with open(os.path.join(data, "wav.scp")) as f:
        utts = [line.split()[0] for line in f]
    assert sorted(hyps) == sorted(utts)
