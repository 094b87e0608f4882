#!/usr/bin/env bash
# Stage 1 of the LibriSpeech-100 recipe: Kaldi-style data dirs from a local LibriSpeech tree.
#   local/data.sh [--librispeech_dir DIR]     (default: $LIBRISPEECH from db.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
. ./db.sh
librispeech_dir=${LIBRISPEECH}
while [ $# -gt 0 ]; do
    case "$1" in
        --librispeech_dir) librispeech_dir=$2; shift 2 ;;
        *) echo "local/data.sh: unknown option $1 (expected --librispeech_dir DIR)" >&2; exit 1 ;;
    esac
done
"${PYTHON:-python3}" local/prepare_librispeech.py --librispeech_dir "${librispeech_dir}" --data_dir data
