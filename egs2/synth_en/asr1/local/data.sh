#!/usr/bin/env bash
# Stage 1 of egs2/synth_en/asr1: synthesise an English ASR corpus offline (no download).
#
# Usage (from egs2/synth_en/asr1):
#   local/data.sh [--train_hours 4.0] [--dev_utts 300] [--test_utts 200] [--top_words 1000]
#                 [--seed 1] [--nj 2] [--datadir downloads/synth_en] [--force]
# Writes data/{train,dev,test_seen,test_unseen_voice,test_noisy,test_tempo,test_real}/
#   {wav.scp,text,utt2spk,spk2utt}; wavs (16 kHz mono 16-bit) under <datadir>/<split>/.
# Needs (Debian): espeak-ng flite festival festvox-kdlpc16k festvox-us-slt-hts sox
#   fortunes fortunes-min wordnet-base pocketsphinx-testdata; python3 with numpy ($PYTHON overrides).
# A re-run with the same options skips if the corpus in <datadir> is complete; otherwise (or with
# --force) everything is regenerated.
set -euo pipefail

src="${BASH_SOURCE[0]}"
here="${src%/*}"
[ "${here}" = "${src}" ] && here=.
PYTHON="${PYTHON:-python3}"

if ! command -v "${PYTHON}" >/dev/null 2>&1; then
    echo "ERROR: $0: python interpreter '${PYTHON}' not found (set PYTHON=/path/to/python with numpy)." >&2
    echo "Fix with:  sudo apt-get install -y python3 python3-numpy" >&2
    exit 2
fi

exec "${PYTHON}" "${here}/synth_corpus.py" "$@"
