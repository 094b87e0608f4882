#!/usr/bin/env bash
# synth_en: a synthetic English ASR corpus built offline (local/data.sh), trained with the
# Omni-router MoE Conformer by default.  Every option of asr.sh can be overridden, e.g.
#   ./run.sh --asr_config conf/train_asr_switch_conformer.yaml --ngpu 1
#   ./run.sh --stage 6 --inference_args "--beam_size 5"
#   ./run.sh --asr_config conf/tiny/train_asr_omni_router_conformer.yaml \
#            --inference_config conf/tiny/decode_asr.yaml \
#            --local_data_opts "--train_hours 0.01 --dev_utts 6 --test_utts 4"
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

train_set=train
valid_set=dev
test_sets="test_seen test_unseen_voice test_noisy test_tempo test_real"

asr_config=conf/train_asr_omni_router_conformer.yaml
inference_config=conf/decode_asr.yaml

# Tokens: sentencepiece unigram with 150 pieces rather than characters.  The corpus is read from a
# closed set of frequent words (local/data.sh --top_words), so 150 subwords each occur thousands
# of times even in a few hours of audio, while the targets get ~3x shorter than characters: fewer
# decoder steps in training and in beam search, which dominates decoding time on a CPU.  Every
# letter stays a piece (character_coverage 1.0), so words outside the training text (test_real)
# can still be spelled.
token_type=bpe
nbpe=150

./asr.sh \
    --train_set "${train_set}" \
    --valid_set "${valid_set}" \
    --test_sets "${test_sets}" \
    --token_type "${token_type}" \
    --nbpe "${nbpe}" \
    --fs 16k \
    --min_wav_duration 0.1 \
    --max_wav_duration 20 \
    --asr_config "${asr_config}" \
    --inference_config "${inference_config}" \
    "$@"
