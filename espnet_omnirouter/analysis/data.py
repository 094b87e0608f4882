"""Read the utterances of an ESPnet data directory (``wav.scp``) as float32 waveforms.

Supported ``wav.scp`` entries (Kaldi style ``utt_id  spec``):
  * a sound file path (anything soundfile reads: wav, flac, ...), as in ``dump/raw/<set>``;
  * a pipe ``command |`` whose standard output is a sound file;
  * a Kaldi ark offset ``path.ark:123`` (read with kaldiio).
A ``segments`` file next to ``wav.scp`` (``utt_id  rec_id  start  end`` in seconds) is honoured.
Multi-channel audio is reduced to its first channel.
"""
import io
import os
import subprocess
from pathlib import Path
from typing import Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import soundfile

DataSpec = Union[str, os.PathLike, Mapping[str, np.ndarray], Sequence[Tuple[str, np.ndarray]]]


def scp_path(data: Union[str, os.PathLike]) -> Path:
    """``data/wav.scp`` for a directory, ``data`` itself for a file."""
    path = Path(data)
    if path.is_dir():
        path = path / "wav.scp"
    if not path.is_file():
        raise FileNotFoundError(f"{data}: no such wav.scp (give a data/dump directory or a wav.scp file)")
    return path


def data_name(data: Union[str, os.PathLike]) -> str:
    """Name of a data set: the directory's basename (``dump/raw/test_clean`` -> ``test_clean``).

    For a file ``.../test_clean/wav.scp`` it is its directory's basename; for another
    ``.scp`` file its stem.
    """
    path = Path(os.path.abspath(data))
    if path.is_dir():
        return path.name
    return path.parent.name if path.name == "wav.scp" else path.stem


def _read_table(path: Path) -> List[Tuple[str, str]]:
    rows = []
    with open(path, encoding="utf-8") as f:
        for num, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            key, _, value = line.partition(" ")
            value = value.strip()
            if not value:
                raise ValueError(f"{path}:{num}: expected 'utt_id value', got {line!r}")
            rows.append((key, value))
    return rows


class WavScp:
    """Random access to the utterances of a ``wav.scp`` (see the module docstring).

    Args:
        data: a directory with ``wav.scp`` or a ``wav.scp`` file.
    """

    def __init__(self, data: Union[str, os.PathLike]):
        self.path = scp_path(data)
        self.base = self.path.parent
        self.recordings: Dict[str, str] = dict(_read_table(self.path))
        segments = self.base / "segments" if self.path.name == "wav.scp" else None
        if segments is not None and segments.is_file():
            self.entries = []
            for utt, value in _read_table(segments):
                rec, start, end = value.split()
                self.entries.append((utt, rec, float(start), float(end)))
        else:
            self.entries = [(utt, utt, 0.0, -1.0) for utt in self.recordings]
        self._num_samples = self._read_num_samples()

    def _read_num_samples(self) -> Dict[str, int]:
        """``utt2num_samples`` of an ESPnet dump directory, when present and complete."""
        path = self.base / "utt2num_samples"
        if self.path.name != "wav.scp" or not path.is_file():
            return {}
        table = {utt: value for utt, value in _read_table(path)}
        try:
            return {utt: int(table[utt]) for utt, *_ in self.entries}
        except (KeyError, ValueError):
            return {}

    def __len__(self) -> int:
        return len(self.entries)

    def keys(self) -> List[str]:
        return [utt for utt, *_ in self.entries]

    def num_samples(self, index: int) -> Optional[int]:
        """The utterance's length in samples when it is cheap to know, else None."""
        utt, rec, start, end = self.entries[index]
        if utt in self._num_samples:
            return self._num_samples[utt]
        spec = self.recordings[rec]
        if start > 0 or end >= 0 or spec.endswith("|") or _is_ark(spec):
            return None
        try:
            return soundfile.info(self._resolve(spec)).frames
        except Exception:  # noqa: BLE001 (unknown length: read it later)
            return None

    def _resolve(self, spec: str) -> str:
        return spec if os.path.isabs(spec) or os.path.exists(spec) else str(self.base / spec)

    def read(self, index: int) -> Tuple[str, np.ndarray, int]:
        """``(utt_id, waveform float32 [S], sample_rate)``."""
        utt, rec, start, end = self.entries[index]
        if rec not in self.recordings:
            raise KeyError(f"{self.path}: recording {rec!r} of segment {utt!r} is not in wav.scp")
        wav, rate = _read_audio(self.recordings[rec], self._resolve)
        if start > 0 or end >= 0:
            wav = wav[int(round(start * rate)) : (None if end < 0 else int(round(end * rate)))]
        return utt, wav, rate


def _is_ark(spec: str) -> bool:
    head, sep, offset = spec.rpartition(":")
    return bool(sep) and offset.isdigit() and head.endswith(".ark")


def _read_audio(spec: str, resolve) -> Tuple[np.ndarray, int]:
    spec = spec.strip()
    if spec.endswith("|"):
        out = subprocess.run(spec[:-1], shell=True, check=True, stdout=subprocess.PIPE).stdout
        wav, rate = soundfile.read(io.BytesIO(out), dtype="float32", always_2d=False)
    elif _is_ark(spec):
        import kaldiio

        head, _, offset = spec.rpartition(":")
        loaded = kaldiio.load_mat(f"{resolve(head)}:{offset}")
        if not (isinstance(loaded, tuple) and len(loaded) == 2):
            raise ValueError(f"{spec}: a feature matrix, not audio; routing analysis needs raw audio (feats_type raw)")
        rate, wav = loaded
        wav = np.asarray(wav)
        if np.issubdtype(wav.dtype, np.integer):
            wav = wav.astype(np.float32) / float(np.iinfo(wav.dtype).max + 1)
    else:
        wav, rate = soundfile.read(resolve(spec), dtype="float32", always_2d=False)
    wav = np.asarray(wav, dtype=np.float32)
    if wav.ndim == 2:
        wav = wav[:, 0]
    return wav, int(rate)


class InMemory:
    """The same interface over ``{utt_id: waveform}`` (or ``[(utt_id, waveform), ...]``)."""

    def __init__(self, items: Union[Mapping[str, np.ndarray], Sequence[Tuple[str, np.ndarray]]], rate: int = 16000):
        pairs = list(items.items()) if isinstance(items, Mapping) else list(items)
        self.entries = [(str(utt), np.asarray(wav, dtype=np.float32).reshape(-1)) for utt, wav in pairs]
        self.rate = rate

    def __len__(self) -> int:
        return len(self.entries)

    def keys(self) -> List[str]:
        return [utt for utt, _ in self.entries]

    def num_samples(self, index: int) -> Optional[int]:
        return len(self.entries[index][1])

    def read(self, index: int) -> Tuple[str, np.ndarray, int]:
        utt, wav = self.entries[index]
        return utt, wav, self.rate


def open_data(data: DataSpec):
    """A :class:`WavScp` for a path, an :class:`InMemory` for waveforms."""
    if isinstance(data, (WavScp, InMemory)):
        return data
    if isinstance(data, (str, os.PathLike)):
        return WavScp(data)
    return InMemory(data)


def batches(source, indices: Sequence[int], batch_size: int) -> Iterator[List[Tuple[str, np.ndarray, int]]]:
    """Read ``indices`` in consecutive groups of ``batch_size``."""
    for start in range(0, len(indices), batch_size):
        yield [source.read(i) for i in indices[start : start + batch_size]]
