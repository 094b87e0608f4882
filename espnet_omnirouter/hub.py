"""Load shared MoE ASR models: packed zip, unpacked directory, experiment dir or Hugging Face id.

ESPnet loads weights with ``strict=False``, so a renamed parameter would silently stay
random.  Everything here checks that the checkpoint's keys are exactly the model's.

    >>> from espnet_omnirouter.hub import load_speech2text
    >>> speech2text = load_speech2text("exp/asr_omni/asr_model.zip")
    >>> text = speech2text(waveform)[0][0]
"""
import glob
import os
from pathlib import Path
from typing import Dict, Optional, Union

import torch

import espnet_omnirouter  # noqa: F401  (registers our classes before ESPnet builds a model)

# Preferred checkpoint names in an experiment directory, best first.
_CHECKPOINTS = ("valid.acc.ave.pth", "valid.loss.ave.pth", "valid.acc.best.pth", "valid.loss.best.pth")


def default_cache_dir() -> str:
    """``$ESPNET_OMNIROUTER_CACHE`` or ``~/.cache/espnet_omnirouter`` (never site-packages)."""
    return os.environ.get("ESPNET_OMNIROUTER_CACHE", os.path.join(Path.home(), ".cache", "espnet_omnirouter"))


def resolve_model_files(model: Union[str, Path], cache_dir: Optional[str] = None) -> Dict[str, str]:
    """Paths of ``asr_train_config``, ``asr_model_file`` (and packed extras) for ``model``.

    ``model`` may be:
      * a zip made by ``espnet2.bin.pack asr`` (unpacked into ``cache_dir``);
      * an unpacked pack (a directory with ``meta.yaml``; its config paths are rewritten
        to point into it, as espnet_model_zoo does for Hugging Face snapshots);
      * an experiment directory with ``config.yaml`` and a ``*.pth`` checkpoint;
      * a Hugging Face model id ``owner/name`` (downloaded through espnet_model_zoo).
    """
    from espnet_model_zoo.downloader import ModelDownloader

    cache_dir = cache_dir or default_cache_dir()
    path = Path(model)
    if path.is_file():
        if path.suffix != ".zip":
            raise ValueError(f"{model}: expected a .zip made by `espnet2.bin.pack asr`")
        # espnet_model_zoo keys its unpack cache on the zip's path alone; add size and mtime
        # so that a zip re-packed at the same path is unpacked again, not served stale.
        stat = path.stat()
        version_dir = os.path.join(cache_dir, f"{path.stem}-{stat.st_size}-{stat.st_mtime_ns}")
        return ModelDownloader(version_dir).download_and_unpack(str(path.resolve()))
    if path.is_dir():
        if (path / "meta.yaml").exists():
            return ModelDownloader._unpack_cache_dir_for_huggingfase(str(path.resolve()))
        if (path / "config.yaml").exists():
            return {"asr_train_config": str(path / "config.yaml"), "asr_model_file": _best_checkpoint(path)}
        raise FileNotFoundError(f"{model}: directory has neither meta.yaml (a pack) nor config.yaml (an exp dir)")
    if str(model).count("/") == 1 and not str(model).startswith((".", "/")):
        return ModelDownloader(cache_dir).download_and_unpack(str(model))
    raise FileNotFoundError(f"{model}: no such zip or directory, and not a Hugging Face id 'owner/name'")


def _best_checkpoint(exp_dir: Path) -> str:
    for name in _CHECKPOINTS:
        if (exp_dir / name).exists():
            return str(exp_dir / name)
    epochs = sorted(glob.glob(str(exp_dir / "*epoch.pth")), key=lambda p: int(Path(p).name.split("epoch")[0]))
    if not epochs:
        raise FileNotFoundError(f"{exp_dir}: no checkpoint (*.pth) found")
    return epochs[-1]


def check_checkpoint(model: torch.nn.Module, model_file: str) -> None:
    """Raise if the checkpoint's parameter names differ from ``model``'s in any way."""
    state = torch.load(model_file, map_location="cpu", weights_only=False)
    if "module" in state:  # deepspeed layout, as ESPnet accepts it
        state = state["module"]
    expected, found = set(model.state_dict()), set(state)
    missing, unexpected = sorted(expected - found), sorted(found - expected)
    if missing or unexpected:
        raise RuntimeError(
            f"checkpoint {model_file} does not match its model: "
            f"missing keys {missing}, unexpected keys {unexpected}"
        )


def load_asr_model(model: Union[str, Path], cache_dir: Optional[str] = None, device: str = "cpu"):
    """Build the ESPnet ASR model of ``model`` with strictly checked weights.

    Returns:
        ``(asr_model, train_args)`` as ``ASRTask.build_model_from_file`` returns them, in eval mode.
    """
    from espnet2.tasks.asr import ASRTask

    files = resolve_model_files(model, cache_dir)
    asr_model, train_args = ASRTask.build_model_from_file(files["asr_train_config"], files["asr_model_file"], device)
    check_checkpoint(asr_model, files["asr_model_file"])
    return asr_model.eval(), train_args


def load_speech2text(model: Union[str, Path], cache_dir: Optional[str] = None, **speech2text_kwargs):
    """A ready ``espnet2.bin.asr_inference.Speech2Text`` for ``model`` (see
    :func:`resolve_model_files`), its checkpoint checked strictly.

    Keyword arguments go to ``Speech2Text`` (``device``, ``beam_size``, ``ctc_weight``, ...).
    A language model packed with the model (``asr.sh --use_lm true``) is used, as
    espnet_model_zoo's ``Speech2Text.from_pretrained`` does, with ESPnet's default
    ``lm_weight`` 1.0 unless you pass another (the synth_en recipe decodes with 0.6);
    ``lm_train_config=None, lm_file=None`` leaves it out.
    """
    from espnet2.bin.asr_inference import Speech2Text

    files = resolve_model_files(model, cache_dir)
    packed_lm = {k: files[k] for k in ("lm_train_config", "lm_file") if files.get(k)}
    speech2text = Speech2Text(
        asr_train_config=files["asr_train_config"],
        asr_model_file=files["asr_model_file"],
        **{**packed_lm, **speech2text_kwargs},
    )
    check_checkpoint(speech2text.asr_model, files["asr_model_file"])
    return speech2text
