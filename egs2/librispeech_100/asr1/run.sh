#!/usr/bin/env bash
# LibriSpeech-100 (train-clean-100) with the Omni-router MoE Conformer by default, at ESPnet's
# LibriSpeech-100 Conformer size (12 blocks, d=256, FFN 1024, 8 experts), BPE 5000.
#
# The recipe does not download: extract the LibriSpeech subsets (train-clean-100, dev-clean,
# dev-other, test-clean, test-other from https://www.openslr.org/12) under one folder and run
#   ./run.sh --local_data_opts "--librispeech_dir /path/to/LibriSpeech" --ngpu 1
# (or set LIBRISPEECH in db.sh).  Other encoders:
#   ./run.sh --asr_config conf/train_asr_conformer.yaml          # dense baseline
#   ./run.sh --asr_config conf/train_asr_switch_conformer.yaml   # Switch (one router per FFN)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

train_set=train_clean_100
valid_set=dev
test_sets="test_clean test_other dev_clean dev_other"

asr_config=conf/train_asr_omni_router_conformer.yaml
inference_config=conf/decode_asr.yaml

./asr.sh \
    --train_set "${train_set}" \
    --valid_set "${valid_set}" \
    --test_sets "${test_sets}" \
    --token_type bpe \
    --nbpe 5000 \
    --bpemode unigram \
    --max_wav_duration 30 \
    --asr_config "${asr_config}" \
    --inference_config "${inference_config}" \
    "$@"
