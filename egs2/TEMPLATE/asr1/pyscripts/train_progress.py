#!/usr/bin/env python3
"""One console line per epoch of an ESPnet training, read from its log as the log grows.

asr.sh writes the whole output of ``asr_train``/``lm_train`` to ``<exp>/train.log`` and shows
nothing of it; this follower prints, for each ``<k>epoch results: [train] ... [valid] ...``
line ESPnet logs there, e.g.

    2026-01-01T12:00:00 (asr.sh) [ASR] epoch 2/8: train loss 45.123, valid loss 40.210,
        valid acc 0.312; epoch 3 min 50 s, about 23 min left

(one line; ``valid ppl`` for an LM, which has no accuracy).  N comes from ESPnet's
``<k>/<N>epoch started`` lines; the epoch time and the estimate of the time left come from the
log's timestamps (the time left is the mean time of the epochs run so far, including
validation and checkpointing, times the epochs left).

    train_progress.py --log exp/asr_x/train.log --pid PID [--name ASR]
        follows the log while process PID lives, and stops at the line ``# finished at ...``
        or ``# failed at ...`` that asr.sh appends when the training ends (whichever comes
        first); it never fails: its exit status is 0, a line it cannot parse is skipped.
    train_progress.py --log exp/asr_x/train.log
        prints the lines of a log once and exits.
"""

import argparse
import datetime
import os
import re
import sys
import time
from typing import Dict, Optional

STARTED = re.compile(r"\b(\d+)/(\d+)epoch started")
RESULTS = re.compile(r"\b(\d+)epoch results: (.*)$")
FINISHED = re.compile(r"The training was finished at (\d+) epochs")
STAMP = re.compile(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3})")
VALUE = re.compile(r"(?:^|[\s,])(\w+)=([-+]?(?:[0-9.]+(?:e[-+]?\d+)?|nan|inf))(?=,|\s|$)")
END_MARKERS = ("# finished at ", "# failed at ")  # appended by asr.sh after the training


def parse_stats(text: str) -> Dict[str, float]:
    """``key=value`` pairs of one phase of an ESPnet results line (numbers only)."""
    return {k: float(v) for k, v in VALUE.findall(text)}


def parse_results(text: str) -> Dict[str, Dict[str, float]]:
    """``[train] a=1, ... [valid] b=2, ...`` -> ``{"train": {...}, "valid": {...}}``."""
    parts = re.split(r"\[(\w+)\]", text)  # ['', 'train', ' a=1, ', 'valid', ' b=2']
    return {parts[i]: parse_stats(parts[i + 1]) for i in range(1, len(parts) - 1, 2)}


def format_span(seconds: float) -> str:
    """12.3 s, 3 min 05 s, 2 h 04 min."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def _number(value: Optional[float]) -> str:
    if value is None:
        return "?"
    return f"{value:.3e}" if value and (abs(value) >= 1e4 or abs(value) < 1e-3) else f"{value:.3f}"


class Progress:
    """Turns log lines into epoch lines (``feed`` returns the line to print, or None)."""

    def __init__(self, name: str = "", clock=time.time):
        self.name = name
        self.clock = clock  # for logs without timestamps
        self.total: Optional[int] = None
        self.started: Dict[int, float] = {}
        self.first: Optional[int] = None  # first epoch run by this process
        self.epochs = 0

    def _when(self, line: str) -> float:
        m = STAMP.search(line)
        if m:
            stamp = datetime.datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S")
            return stamp.timestamp() + int(m.group(2)) / 1000
        return self.clock()

    def feed(self, line: str) -> Optional[str]:
        m = STARTED.search(line)
        if m:
            epoch, self.total = int(m.group(1)), int(m.group(2))
            self.started[epoch] = self._when(line)
            if self.first is None:
                self.first = epoch
            return None
        m = RESULTS.search(line)
        if m:
            return self._epoch_line(int(m.group(1)), parse_results(m.group(2)), self._when(line))
        m = FINISHED.search(line)
        if m and self.epochs == 0:
            return self._prefix() + f"nothing to train: finished at {m.group(1)} epochs (resumed from its checkpoint)"
        return None

    def _prefix(self) -> str:
        return f"[{self.name}] " if self.name else ""

    def _epoch_line(self, epoch: int, phases: Dict[str, Dict[str, float]], when: float) -> str:
        self.epochs += 1
        train, valid = phases.get("train", {}), phases.get("valid", {})
        total = "?" if self.total is None else self.total
        parts = [f"train loss {_number(train.get('loss'))}", f"valid loss {_number(valid.get('loss'))}"]
        if "acc" in valid:
            parts.append(f"valid acc {_number(valid['acc'])}")
        elif "ppl" in valid:
            parts.append(f"valid ppl {_number(valid['ppl'])}")
        line = self._prefix() + f"epoch {epoch}/{total}: " + ", ".join(parts)
        start = self.started.get(epoch)
        if start is not None:
            line += f"; epoch {format_span(max(0.0, when - start))}"
            if self.total is not None and self.first is not None and self.first in self.started:
                per_epoch = max(0.0, when - self.started[self.first]) / (epoch - self.first + 1)
                left = self.total - epoch
                line += f", about {format_span(per_epoch * left)} left" if left > 0 else ", done"
        return line


def _alive(pid: Optional[int]) -> bool:
    if pid is None:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _say(text: str) -> None:
    print(f"{datetime.datetime.now():%Y-%m-%dT%H:%M:%S} (asr.sh) {text}", flush=True)


def follow(log: str, pid: Optional[int], name: str, interval: float) -> None:
    """Print the epoch lines of ``log`` as it grows; see the module docstring."""
    progress = Progress(name)
    position, pending = 0, b""
    while True:
        alive = _alive(pid)  # checked before reading: what it wrote before dying is read below
        ended = False
        try:
            with open(log, "rb") as f:
                f.seek(0, os.SEEK_END)
                if f.tell() < position:  # the log was started again
                    position, pending = 0, b""
                f.seek(position)
                data = f.read()
                position = f.tell()
        except OSError:
            data = b""
        pending += data
        *lines, pending = pending.split(b"\n")
        for raw in lines:
            line = raw.decode("utf-8", errors="replace").rstrip("\r")
            if line.startswith(END_MARKERS):
                ended = True
                continue
            text = progress.feed(line)
            if text:
                _say(text)
        if ended or not alive:
            return
        time.sleep(interval)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--log", required=True, help="the training log (train.log)")
    p.add_argument("--pid", type=int, default=None, help="follow while this process lives (none: read once)")
    p.add_argument("--name", default="", help="label of the lines, e.g. ASR or LM")
    p.add_argument("--interval", type=float, default=1.0, help="seconds between two reads of the log")
    args = p.parse_args(argv)
    try:
        follow(args.log, args.pid, args.name, args.interval)
    except (BrokenPipeError, KeyboardInterrupt):
        pass
    except Exception as e:  # a follower must never fail the training stage
        print(f"train_progress.py: stopped following {args.log}: {type(e).__name__}: {e}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
