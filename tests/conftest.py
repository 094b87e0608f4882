"""Shared fixtures: this checkout installed from its wheel into a throw-away venv, and one
tiny Omni-router model trained there by ESPnet's own ``espnet2.bin.asr_train``."""
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from installs import build_wheel, fresh_env, make_venv, site_packages  # noqa: E402
from tiny_asr_data import ROOT, run, train_args, write_data  # noqa: E402


@pytest.fixture(scope="session")
def installed_wheel(tmp_path_factory):
    """This checkout's wheel, pip-installed into a venv that borrows the heavy packages.

    Returns a dict: ``wheel`` (its path), ``venv``, ``python`` (the venv's interpreter),
    ``site`` (its site-packages), ``env`` (environment for its processes: no PYTHONPATH)
    and ``cwd`` (an empty directory to run them in, so that ``python -m`` does not put
    the checkout on ``sys.path``).  In its processes our package is importable only from
    the venv and registered only by the installed hook.
    """
    tmp = tmp_path_factory.mktemp("installed_wheel")
    wheel = build_wheel(str(tmp / "build"))
    venv = str(tmp / "venv")
    python = make_venv(venv, wheel)
    cwd = tmp / "cwd"
    cwd.mkdir()
    return {"wheel": wheel, "venv": venv, "python": python, "site": site_packages(venv),
            "env": fresh_env(), "cwd": str(cwd)}


@pytest.fixture(scope="session")
def tiny_omni(installed_wheel, tmp_path_factory):
    """A tiny Omni-router Conformer trained 1 epoch on 8 random utterances by ESPnet's own
    ``python -m espnet2.bin.asr_train`` (``model: moe_espnet``), in the ``installed_wheel``
    venv: nothing of ours is imported but by the hook.

    Returns ``(data_dir, exp_dir)``; ``exp_dir`` holds ``config.yaml`` and ``1epoch.pth``,
    the training's console output is ``train.log`` beside ``exp_dir``.
    """
    tmp = tmp_path_factory.mktemp("tiny_omni")
    data = write_data(str(tmp / "data"), num_utts=8)
    exp = str(tmp / "exp")
    config = os.path.join(ROOT, "conf", "tiny", "train_asr_omni_router_conformer.yaml")
    run(
        [installed_wheel["python"], "-m", "espnet2.bin.asr_train",
         *train_args(data, config, exp, "--max_epoch", "1")],
        str(tmp / "train.log"), env=installed_wheel["env"], cwd=installed_wheel["cwd"],
    )
    return data, exp


@pytest.fixture(scope="session")
def quality(tmp_path_factory):
    """The tiny quality.sh run shared by the quality, RoE and decoding-speed benchmark tests
    (tests/bench_helpers.py): its work dir, results dir, seed-1 experiments and console output."""
    from bench_helpers import run_tiny_quality

    return run_tiny_quality(tmp_path_factory.mktemp("quality"))
