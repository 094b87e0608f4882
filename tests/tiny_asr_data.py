"""A tiny ASR data set and the ESPnet command lines that train and decode on it."""
import os
import subprocess
import sys

import numpy as np
import soundfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOKENS = ["<blank>", "<unk>", "<space>", "A", "B", "C", "<sos/eos>"]


def write_data(path, num_utts=16, seed=0):
    """Random 0.6-1.2 s waveforms with random A/B/C texts; returns the data dir."""
    rng = np.random.default_rng(seed)
    os.makedirs(path, exist_ok=True)
    wav_scp, text, shape = [], [], []
    for i in range(num_utts):
        utt = f"utt{i:03d}"
        n = int(rng.integers(9600, 19200))
        wav = os.path.join(path, f"{utt}.wav")
        soundfile.write(wav, (0.1 * rng.standard_normal(n)).astype(np.float32), 16000)
        words = [
            "".join(rng.choice(list("ABC"), size=int(rng.integers(1, 4)))) for _ in range(int(rng.integers(1, 4)))
        ]
        wav_scp.append(f"{utt} {wav}")
        text.append(f"{utt} {' '.join(words)}")
        shape.append(f"{utt} {n}")
    for name, lines in (("wav.scp", wav_scp), ("text", text), ("speech_shape", shape)):
        with open(os.path.join(path, name), "w") as f:
            f.write("\n".join(lines) + "\n")
    with open(os.path.join(path, "tokens.txt"), "w") as f:
        f.write("\n".join(TOKENS) + "\n")
    return path


def train_args(data, config, output_dir, *extra):
    """Arguments of ``asr_train`` (ESPnet's or ours) for the tiny data set."""
    args = [
        "--config", config,
        "--output_dir", output_dir,
        "--token_list", os.path.join(data, "tokens.txt"),
        "--token_type", "char",
        "--ngpu", "0",
        "--seed", "0",
        "--use_tensorboard", "false",
        "--use_matplotlib", "false",
        "--resume", "false",
        "--fold_length", "150000",
    ]
    for split in ("train", "valid"):
        args += [
            f"--{split}_data_path_and_name_and_type", f"{data}/wav.scp,speech,sound",
            f"--{split}_data_path_and_name_and_type", f"{data}/text,text,text",
            f"--{split}_shape_file", f"{data}/speech_shape",
        ]
    return args + list(extra)


def inference_args(config, model_file, data, out, *extra):
    """Options of our ``asr_inference`` for the tiny data set (``model_file`` None: none, ESPnet
    builds the model untrained)."""
    args = [
        "--asr_train_config", config,
        "--data_path_and_name_and_type", f"{data}/wav.scp,speech,sound",
        "--output_dir", out,
        "--ngpu", "0",
        "--batch_size", "1",
        "--beam_size", "2",
        "--ctc_weight", "0.3",
    ]
    if model_file is not None:
        args += ["--asr_model_file", model_file]
    return args + list(extra)


def run(cmd, log, env=None, cwd=ROOT):
    """Run ``cmd`` in ``cwd`` with output to ``log``; raise with the log's tail on failure.

    ``env`` None: this process's environment with the checkout first on ``PYTHONPATH``.
    """
    if env is None:
        env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    with open(log, "w") as f:
        proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=cwd, env=env)
    with open(log) as f:
        out = f.read()
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}); log {log}:\n{out[-4000:]}")
    return out


PYTHON = sys.executable
