"""egs2/TEMPLATE/asr1/pyscripts/train_progress.py: per-epoch console lines from a growing train.log."""
import os
import queue
import re
import subprocess
import sys
import threading
import time

import pytest

from tiny_asr_data import PYTHON, ROOT

PYSCRIPTS = os.path.join(ROOT, "egs2", "TEMPLATE", "asr1", "pyscripts")
SCRIPT = os.path.join(PYSCRIPTS, "train_progress.py")
sys.path.insert(0, PYSCRIPTS)
import train_progress  # noqa: E402

LINE = re.compile(
    r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d \(asr\.sh\) \[ASR\] epoch (\d+)/(\d+): train loss (\S+), "
    r"valid loss (\S+), valid acc (\S+); epoch (.+?), (done|about .* left)$"
)


def results_value(log_line, phase, key):
    """``key`` of ``phase`` in an ESPnet ``<k>epoch results`` line, as ESPnet printed it."""
    train, valid = re.search(r"\[train\] (.*) \[valid\] (.*)$", log_line).groups()
    return re.search(rf"(?:^|, ){key}=([^,]+)", train if phase == "train" else valid).group(1)


@pytest.fixture(scope="module")
def real_log(tiny_omni):
    """The console output (= train.log in asr.sh) of the 1-epoch tiny training."""
    _, exp = tiny_omni
    with open(os.path.join(os.path.dirname(exp), "train.log")) as f:
        return f.read()


def test_real_log_gives_one_line_per_epoch(real_log, tmp_path):
    log = tmp_path / "train.log"
    log.write_text(real_log)
    out = subprocess.run([PYTHON, SCRIPT, "--log", str(log), "--name", "ASR"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stderr == ""
    lines = out.stdout.splitlines()
    assert len(lines) == 1, lines
    m = LINE.match(lines[0])
    assert m, lines[0]
    results = next(l for l in real_log.splitlines() if "1epoch results" in l)
    assert m.group(1, 2) == ("1", "1") and m.group(7) == "done"
    assert float(m.group(3)) == float(results_value(results, "train", "loss"))
    assert float(m.group(4)) == float(results_value(results, "valid", "loss"))
    assert float(m.group(5)) == float(results_value(results, "valid", "acc"))


def stamped(seconds, message):
    """An ESPnet log line at 2026-01-01 12:00:00 + seconds."""
    minutes, secs = divmod(seconds, 60)
    return f"[host] 2026-01-01 12:{minutes:02d}:{secs:06.3f} (trainer:1) INFO: {message}".replace(".", ",", 1)


def results(epoch, train_loss, valid_loss, valid_key="acc", valid_value=0.5):
    return (f"{epoch}epoch results: [train] iter_time=0.002, loss_ctc=9.000, loss={train_loss}, "
            f"time=1 minute and 2.5 seconds, total_count=2, [valid] loss_ctc=8.000, {valid_key}={valid_value}, "
            f"loss={valid_loss}, time=0.03 seconds, total_count=2")


def test_epoch_time_and_time_left_from_the_timestamps():
    """Epoch 1 runs 60 s, epoch 2 starts at 65 s and ends at 125 s: the mean epoch of this
    run is 62.5 s, so after epoch 2 of 4 about 125 s are left."""
    progress = train_progress.Progress("ASR")
    lines = [stamped(0, "1/4epoch started"), stamped(60, results(1, 20.5, 19.25)),
             stamped(65, "2/4epoch started. Estimated time to finish: 3 minutes"),
             stamped(125, results(2, 1.5e-4, 23456.0, "acc", 0.75))]
    out = [progress.feed(line) for line in lines]
    assert out[0] is None and out[2] is None
    assert out[1] == "[ASR] epoch 1/4: train loss 20.500, valid loss 19.250, valid acc 0.500; epoch 1 min 00 s, about 3 min 00 s left"
    assert out[3] == "[ASR] epoch 2/4: train loss 1.500e-04, valid loss 2.346e+04, valid acc 0.750; epoch 1 min 00 s, about 2 min 05 s left"


def test_resumed_run_counts_only_its_own_epochs_and_lm_shows_perplexity():
    progress = train_progress.Progress("LM")
    assert progress.feed(stamped(0, "3/4epoch started")) is None
    line = progress.feed(stamped(30, results(3, 2.0, 1.9, "ppl", 6.7)))
    assert line == "[LM] epoch 3/4: train loss 2.000, valid loss 1.900, valid ppl 6.700; epoch 30.0 s, about 30.0 s left"


def test_finished_training_resumed_says_so():
    progress = train_progress.Progress("ASR")
    assert progress.feed(stamped(0, "The training was finished at 8 epochs ")) == (
        "[ASR] nothing to train: finished at 8 epochs (resumed from its checkpoint)")
    progress = train_progress.Progress("ASR")
    progress.feed(stamped(0, "1/1epoch started"))
    progress.feed(stamped(1, results(1, 2.0, 1.0)))
    assert progress.feed(stamped(2, "The training was finished at 1 epochs ")) is None


def start_follower(log, pid):
    proc = subprocess.Popen([PYTHON, SCRIPT, "--log", str(log), "--pid", str(pid), "--name", "ASR", "--interval", "0.1"],
                            stdout=subprocess.PIPE, text=True)
    lines = queue.Queue()
    threading.Thread(target=lambda: [lines.put(l) for l in proc.stdout], daemon=True).start()
    return proc, lines


def test_follower_prints_epochs_while_the_log_grows_and_stops_at_the_end_marker(real_log, tmp_path):
    log = tmp_path / "train.log"
    log.write_text("# asr_train ...\n# started at now\n")
    text = real_log.splitlines(keepends=True)
    cut = next(i for i, l in enumerate(text) if "1epoch results" in l)
    proc, lines = start_follower(log, os.getpid())  # a process that stays alive
    try:
        with open(log, "a") as f:
            f.writelines(text[:cut])
            f.write(text[cut][:40])  # half a line is not read as a line
            f.flush()
            time.sleep(0.5)
            assert lines.empty() and proc.poll() is None
            f.write(text[cut][40:])
            f.flush()
            line = lines.get(timeout=20)  # printed while the training still runs
            assert LINE.match(line.rstrip("\n")) and proc.poll() is None
            f.writelines(text[cut + 1:])
            f.write("# finished at now\n")
        assert proc.wait(timeout=20) == 0
    finally:
        proc.kill()
        proc.wait()
    assert lines.empty()


def test_follower_stops_when_the_process_is_gone(real_log, tmp_path):
    log = tmp_path / "train.log"
    log.write_text(real_log)  # no end marker: the shell that would write it was killed
    gone = subprocess.Popen(["true"])
    gone.wait()
    proc, lines = start_follower(log, gone.pid)
    try:
        assert proc.wait(timeout=20) == 0
    finally:
        proc.kill()
    assert LINE.match(lines.get(timeout=5).rstrip("\n"))


def test_follower_of_a_missing_log_never_fails(tmp_path):
    gone = subprocess.Popen(["true"])
    gone.wait()
    out = subprocess.run([PYTHON, SCRIPT, "--log", str(tmp_path / "none.log"), "--pid", str(gone.pid)],
                         capture_output=True, text=True, timeout=60)
    assert (out.returncode, out.stdout) == (0, "")
