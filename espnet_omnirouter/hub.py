"""Load shared MoE ASR models: packed zip, unpacked directory, experiment dir or Hugging Face id.

ESPnet loads weights with ``strict=False``, so a renamed parameter would silently stay
random.  Everything here checks that the checkpoint's keys are exactly the model's.

    >>> from espnet_omnirouter.hub import load_speech2text
    >>> speech2text = load_speech2text("exp/asr_omni/asr_model.zip")
    >>> text = speech2text(waveform)[0][0]
"""
import glob
import json
import os
import re
import shutil
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
      * a zip made by ``espnet2.bin.pack asr`` (unpacked into ``cache_dir``; a zip that
        cannot be unpacked raises ``ValueError`` naming it and leaves nothing in the cache);
      * an unpacked pack (a directory with ``meta.yaml``; its config paths are rewritten
        to point into it, as espnet_model_zoo does for Hugging Face snapshots);
      * an experiment directory with ``config.yaml`` and a ``*.pth`` checkpoint;
      * a Hugging Face model id ``owner/name`` (downloaded through espnet_model_zoo).

    A name that looks local and does not exist (it starts with ``.``, ``/`` or ``~``, ends
    in ``.zip``, or its first directory exists here) raises ``FileNotFoundError``: it is
    never sent to the hub.
    """
    from espnet_model_zoo.downloader import ModelDownloader

    cache_dir = cache_dir or default_cache_dir()
    path = Path(model)
    if path.is_file():
        if path.suffix != ".zip":
            raise ValueError(f"{model}: expected a .zip made by `espnet2.bin.pack asr`")
        return unpack_zip(path, cache_dir)
    if path.is_dir():
        if (path / "meta.yaml").exists():
            return ModelDownloader._unpack_cache_dir_for_huggingfase(str(path.resolve()))
        if (path / "config.yaml").exists():
            return {"asr_train_config": str(path / "config.yaml"), "asr_model_file": _best_checkpoint(path)}
        raise FileNotFoundError(f"{model}: directory has neither meta.yaml (a pack) nor config.yaml (an exp dir)")
    local = _looks_local(str(model))
    if local:
        raise FileNotFoundError(f"{model}: no such zip or directory (taken as a local path, not a Hugging Face id: {local})")
    if _HF_ID.match(str(model)):
        return ModelDownloader(cache_dir).download_and_unpack(str(model))
    raise FileNotFoundError(f"{model}: no such zip or directory, and not a Hugging Face id 'owner/name'")


_HF_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")


def _looks_local(model: str) -> Optional[str]:
    """Why ``model`` (that does not exist) is a local path, or None when it may be a hub id."""
    if model.startswith((".", "/", "~")):
        return f"it starts with '{model[0]}'"
    if model.lower().endswith(".zip"):
        return "it ends in .zip"
    first = model.split("/", 1)[0]
    if "/" in model and os.path.isdir(first):
        return f"'{first}/' is a directory here"
    return None


def unpack_zip(zip_path: Path, cache_dir: str) -> Dict[str, str]:
    """Unpack a pack zip into ``<cache_dir>/<stem>-<size>-<mtime>/`` (once) and return its files.

    The cache entry is trusted only when a previous unpack finished (it writes
    ``unpacked.json`` last); a zip that fails to unpack (truncated, corrupt, no meta.yaml)
    raises ``ValueError`` naming it, and its partial entry is removed.  The size and mtime in
    the name make a zip re-packed at the same path unpack again instead of being served stale.
    """
    from espnet2.main_funcs.pack_funcs import unpack
    from filelock import FileLock

    stat = zip_path.stat()
    entry = Path(cache_dir) / f"{zip_path.stem}-{stat.st_size}-{stat.st_mtime_ns}"
    done = entry / "unpacked.json"
    entry.parent.mkdir(parents=True, exist_ok=True)
    lock = Path(f"{entry}.lock")
    with FileLock(str(lock)):
        if done.is_file():
            return json.loads(done.read_text())
        shutil.rmtree(entry, ignore_errors=True)  # an unpack that did not finish
        try:
            files = unpack(zip_path.absolute(), entry)
            missing = [f for f in files.values() if not os.path.exists(f)]
            if missing:
                raise FileNotFoundError(f"files named in its meta.yaml are not in it: {missing}")
        except Exception as e:
            shutil.rmtree(entry, ignore_errors=True)
            lock.unlink(missing_ok=True)
            raise ValueError(
                f"{zip_path}: cannot unpack this model zip ({type(e).__name__}: {e}); "
                "copy it again or re-pack it with `espnet2.bin.pack asr`"
            ) from e
        done.write_text(json.dumps(files))
    return files


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
