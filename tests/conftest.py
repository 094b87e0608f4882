"""Shared fixtures: one tiny trained Omni-router model for the tests that need a model."""
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from tiny_asr_data import PYTHON, ROOT, run, train_args, write_data  # noqa: E402


@pytest.fixture(scope="session")
def tiny_omni(tmp_path_factory):
    """A tiny Omni-router Conformer trained 1 epoch on 8 random utterances.

    Returns ``(data_dir, exp_dir)``; ``exp_dir`` holds ``config.yaml`` and ``1epoch.pth``.
    """
    tmp = tmp_path_factory.mktemp("tiny_omni")
    data = write_data(str(tmp / "data"), num_utts=8)
    exp = str(tmp / "exp")
    config = os.path.join(ROOT, "conf", "tiny", "train_asr_omni_router_conformer.yaml")
    run(
        [PYTHON, "-m", "espnet_omnirouter.bin.asr_train", *train_args(data, config, exp, "--max_epoch", "1")],
        str(tmp / "train.log"),
    )
    return data, exp
