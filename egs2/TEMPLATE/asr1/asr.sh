#!/usr/bin/env bash
# ASR recipe stages for espnet_omnirouter: pip-only (ESPnet wheel + this plugin, no Kaldi, no SCTK).
#
# Run from a recipe directory (egs2/<corpus>/asr1) that has local/data.sh and conf/.
# All paths are relative to that directory.  Helpers live next to this script in pyscripts/.
#
#   1. data prep   local/data.sh ${local_data_opts}           -> data/<set>/{wav.scp,text,utt2spk}
#   2. format      check + resample to ${fs} mono 16-bit wav  -> ${dumpdir}/raw/<set>/
#   3. tokens      sentencepiece (bpe) or char token list     -> data/token_list/<type>/tokens.txt
#   4. stats       asr_train --collect_stats + aggregate      -> ${expdir}/asr_stats_*/train/feats_stats.npz
#   5. train       asr_train                                  -> ${expdir}/asr_${asr_tag}/
#                  with --use_lm true first an LM on the training transcripts (lm_train)
#                                                             -> ${expdir}/lm_${lm_tag}/
#                  the console shows one line per epoch (loss, accuracy, time left) from train.log
#   6. decode      asr_inference over ${inference_nj} jobs    -> .../<decode_tag>/<test_set>/text, rtf.txt
#                  (with --use_streaming true: asr_inference_streaming, chunk by chunk; decode tag _streaming)
#                  (with --use_lm true: shallow fusion with that LM, weight lm_weight of the decode config)
#   7. score       WER/CER with jiwer                         -> .../score_{wer,cer}/result.txt, RESULTS.md
#   8. pack        espnet2.bin.pack asr                       -> ${expdir}/asr_${asr_tag}/asr_model.zip
#   9. upload      model card + Hugging Face upload (only with --hf_repo; --dry_run true: no network)
#                                                             -> ${expdir}/asr_${asr_tag}/hf_upload/
#  10. analysis    routing analysis of MoE encoders on the test sets
#                                                             -> ${expdir}/asr_${asr_tag}/routing_analysis/
#
# Every python step writes its output to a log file; a failing step stops the run with a message
# naming the stage, the command and its log.  Re-running a stage overwrites its outputs (training
# resumes from its last checkpoint, so a finished training is not redone).

set -euo pipefail

log() {
    echo -e "$(date '+%Y-%m-%dT%H:%M:%S') (asr.sh) $*"
}
err() {
    log "ERROR: $*" >&2
}
SECONDS=0

# ---------------------------------------------------------------------------------------------
# Options (each can be given as --name value or --name=value; '-' and '_' are interchangeable).
# ---------------------------------------------------------------------------------------------
# General
stage=1              # first stage to run
stop_stage=10000     # last stage to run
ngpu=0               # GPUs for training (0: CPU; >1: ESPnet's multi-process distributed mode)
nj=$(nproc 2>/dev/null || echo 1)            # parallel jobs (stage 2 workers, stage 4 jobs)
inference_nj=${nj}   # parallel decoding jobs
gpu_inference=false  # decode on GPU (one GPU per job)
dumpdir=dump         # where formatted data goes
expdir=exp           # where experiments go
python=python3       # python interpreter with espnet and espnet_omnirouter installed

# Data
local_data_opts=     # options for local/data.sh
train_set=           # training set name (data/<train_set>)
valid_set=           # validation set name
test_sets=           # test set names, space separated in one argument
fs=16k               # sampling rate of the dumped audio
min_wav_duration=0.1 # drop shorter training/validation utterances (seconds)
max_wav_duration=20  # drop longer training/validation utterances (seconds)

# Tokens
token_type=bpe       # bpe or char
nbpe=150             # sentencepiece vocabulary size (a soft limit on tiny corpora)
bpemode=unigram      # sentencepiece model type: unigram or bpe
bpe_char_cover=1.0   # sentencepiece character coverage
bpe_nlsyms=          # sentencepiece user defined symbols, comma separated

# Training
asr_config=          # training config (yaml)
asr_tag=             # experiment name suffix: ${expdir}/asr_${asr_tag} (default from config)
asr_exp=             # experiment dir (overrides asr_tag)
asr_stats_dir=       # statistics dir (default ${expdir}/asr_stats_raw_<token>)
asr_args=            # extra arguments for training, e.g. "--max_epoch 1"
feats_normalize=     # normalize layer: empty = the config's choice; global_mvn uses stage 4's stats
asr_speech_fold_length=800   # fold length of speech (x100 samples) for batch_type folded
asr_text_fold_length=150     # fold length of text

# Language model (optional): trained in stage 5 on the training transcripts, used in stage 6
use_lm=false         # train an LM and use it in decoding (shallow fusion; lm_weight in the decode config)
lm_config=           # LM training config (yaml), e.g. conf/train_lm.yaml
lm_tag=              # LM experiment name suffix: ${expdir}/lm_${lm_tag} (default from config)
lm_exp=              # LM experiment dir (overrides lm_tag)
lm_args=             # extra arguments for LM training, e.g. "--max_epoch 5"

# Decoding
inference_config=    # decoding config (yaml)
inference_args=      # extra arguments for decoding, e.g. "--beam_size 5"
inference_asr_model= # checkpoint in the exp dir (default: <first best_model_criterion>.ave.pth)
inference_tag=       # decode dir name (default from config and model)
batch_size=1         # decoding batch size
use_streaming=false  # decode a contextual-block model chunk by chunk (asr_inference_streaming; batch 1)

# Sharing and analysis
hf_repo=             # Hugging Face repo id for stage 9 (empty: stage 9 is skipped)
dry_run=false        # stage 9: prepare the upload folder and model card, do not upload
analysis_max_utts=200  # stage 10: utterances per test set for the routing analysis

_options=(stage stop_stage ngpu nj inference_nj gpu_inference dumpdir expdir python
    local_data_opts train_set valid_set test_sets fs min_wav_duration max_wav_duration
    token_type nbpe bpemode bpe_char_cover bpe_nlsyms
    asr_config asr_tag asr_exp asr_stats_dir asr_args feats_normalize
    asr_speech_fold_length asr_text_fold_length
    use_lm lm_config lm_tag lm_exp lm_args
    inference_config inference_args inference_asr_model inference_tag batch_size use_streaming
    hf_repo dry_run analysis_max_utts)

usage() {
    cat <<EOF
Usage: $0 --train_set <name> --valid_set <name> --test_sets "<name> <name> ..." \\
          --asr_config <yaml> --inference_config <yaml> [options]

Options (current value in brackets):
EOF
    local o desc self
    self="$(readlink -f "${BASH_SOURCE[0]}")"
    for o in "${_options[@]}"; do
        # the description is the comment next to the default above
        desc=$(grep -m1 -E "^${o}=" "${self}" | sed -n 's/^[^#]*# *//p')
        printf '    --%-24s %s [%s]\n' "${o}" "${desc}" "${!o}"
    done
    cat <<EOF

Stages: 1 data prep (local/data.sh), 2 format (resample, filter), 3 token list, 4 collect stats,
        5 train (and the LM with --use_lm true), 6 decode (+RTF), 7 score (WER/CER, RESULTS.md), 8 pack (asr_model.zip),
        9 upload to Hugging Face (--hf_repo; --dry_run true), 10 routing analysis (MoE encoders)
EOF
}

_is_option() {
    local o
    for o in "${_options[@]}"; do
        [ "${o}" = "$1" ] && return 0
    done
    return 1
}

log "$0 $(printf '%q ' "$@")"
while [ $# -gt 0 ]; do
    case "$1" in
        -h | --help)
            usage
            exit 0
            ;;
        --*=*)
            _name="${1%%=*}"
            _value="${1#*=}"
            shift
            ;;
        --*)
            if [ $# -lt 2 ]; then
                err "option $1 needs a value"
                exit 2
            fi
            _name="$1"
            _value="$2"
            shift 2
            ;;
        *)
            usage >&2
            err "unexpected argument '$1' (options are --name value)"
            exit 2
            ;;
    esac
    _name="${_name#--}"
    _name="${_name//-/_}"
    if ! _is_option "${_name}"; then
        err "unknown option --${_name} (see $0 --help)"
        exit 2
    fi
    printf -v "${_name}" '%s' "${_value}"
done

# ---------------------------------------------------------------------------------------------
# Checks and derived names
# ---------------------------------------------------------------------------------------------
for _o in stage stop_stage ngpu; do
    if ! [[ "${!_o}" =~ ^[0-9]+$ ]]; then
        err "--${_o} must be a non-negative integer, got '${!_o}'"
        exit 2
    fi
done
for _o in nj inference_nj nbpe batch_size analysis_max_utts asr_speech_fold_length asr_text_fold_length; do
    if ! [[ "${!_o}" =~ ^0*[1-9][0-9]*$ ]]; then
        err "--${_o} must be a positive integer, got '${!_o}'"
        exit 2
    fi
done
_is_number() {  # a non-negative decimal number (1, 0.5, .5, 1e-3)
    [[ "$1" =~ ^([0-9]+\.?[0-9]*|\.[0-9]+)([eE][-+]?[0-9]+)?$ ]]
}
for _o in min_wav_duration max_wav_duration; do
    if ! _is_number "${!_o}"; then
        err "--${_o} must be a number of seconds >= 0, got '${!_o}'"
        exit 2
    fi
done
if awk -v a="${min_wav_duration}" -v b="${max_wav_duration}" 'BEGIN { exit !(a > b) }'; then
    err "--min_wav_duration ${min_wav_duration} must not exceed --max_wav_duration ${max_wav_duration}"
    exit 2
fi
if ! _is_number "${bpe_char_cover}" || awk -v c="${bpe_char_cover}" 'BEGIN { exit !(c <= 0 || c > 1) }'; then
    err "--bpe_char_cover must be a number in (0, 1], got '${bpe_char_cover}'"
    exit 2
fi
for _o in gpu_inference dry_run use_lm use_streaming; do
    case "${!_o}" in
        true | false) ;;
        *)
            err "--${_o} must be true or false, got '${!_o}'"
            exit 2
            ;;
    esac
done

case "${token_type}" in
    bpe | char) ;;
    *)
        err "--token_type must be bpe or char, got '${token_type}'"
        exit 2
        ;;
esac
case "${bpemode}" in
    unigram | bpe) ;;
    *)
        err "--bpemode must be unigram or bpe, got '${bpemode}'"
        exit 2
        ;;
esac

if ! command -v "${python}" >/dev/null 2>&1; then
    err "--python ${python}: not found"
    exit 2
fi

_run_stage() {  # true when stage $1 is selected
    [ "${stage}" -le "$1" ] && [ "${stop_stage}" -ge "$1" ]
}
_needs() {  # option names that must be set for the selected stages $1..$2
    local first=$1 last=$2
    shift 2
    [ "${stage}" -le "${last}" ] && [ "${stop_stage}" -ge "${first}" ] || return 0
    local o
    for o in "$@"; do
        if [ -z "${!o}" ]; then
            err "--${o} is required for stages ${first}-${last} (see $0 --help)"
            exit 2
        fi
    done
}
_needs 2 5 train_set valid_set
_needs 4 5 asr_config
_needs 6 7 test_sets
if ${use_streaming} && [ "${batch_size}" -ne 1 ]; then
    err "--use_streaming true decodes one utterance at a time: --batch_size must be 1, got ${batch_size}"
    exit 2
fi
if ${use_lm} && [ -z "${lm_config}" ] && [ -z "${lm_exp}" ]; then
    err "--use_lm true needs --lm_config (to train the LM in stage 5) or --lm_exp (a trained LM)"
    exit 2
fi
if [ "${stage}" -le 10 ] && [ "${stop_stage}" -ge 4 ] && [ -z "${asr_config}" ] && [ -z "${asr_exp}" ]; then
    err "--asr_config (or --asr_exp) is required for stages 4-10"
    exit 2
fi

# the helper scripts sit next to the real asr.sh (the recipe usually links asr.sh here)
_self="$(readlink -f "${BASH_SOURCE[0]}")"
pyscripts="$(dirname "${_self}")/pyscripts"
[ -d "${pyscripts}" ] || { err "helper dir ${pyscripts} not found"; exit 2; }

data_feats=${dumpdir}/raw
token_listdir=data/token_list
if [ "${token_type}" = bpe ]; then
    token_dir=${token_listdir}/bpe_${bpemode}${nbpe}
    bpeprefix=${token_dir}/bpe
    bpemodel=${bpeprefix}.model
    token_tag=bpe${nbpe}
else
    token_dir=${token_listdir}/char
    bpemodel=none
    token_tag=char
fi
token_list=${token_dir}/tokens.txt

if [ -z "${asr_stats_dir}" ]; then
    asr_stats_dir=${expdir}/asr_stats_raw_${token_tag}
fi
# experiment names: conf/x.yaml -> x, conf/tiny/x.yaml -> tiny_x (keeps the tiny and full configs
# apart), other paths -> their file name without .yaml
_config_tag() {
    local t
    case "$1" in
        conf/*) t="${1#conf/}" ;;
        *) t="$(basename "$1")" ;;
    esac
    t="${t%.yaml}"
    echo "${t//\//_}"
}
# extra arguments as a name suffix: "--max_epoch 1" -> _max_epoch1 (empty for none)
_args_tag() {
    [ -z "$1" ] || echo "$1" | sed -e 's/--/_/g' -e 's/[ |=/]//g'
}

if [ -z "${asr_exp}" ]; then
    if [ -z "${asr_tag}" ]; then
        asr_tag="$(_config_tag "${asr_config}")_raw_${token_tag}$(_args_tag "${asr_args}")"
    fi
    asr_exp=${expdir}/asr_${asr_tag}
fi

if [ -z "${lm_exp}" ]; then
    if [ -z "${lm_tag}" ]; then
        lm_tag="$(_config_tag "${lm_config:-lm}")_${token_tag}$(_args_tag "${lm_args}")"
    fi
    lm_exp=${expdir}/lm_${lm_tag}
fi
lm_stats_dir=${expdir}/lm_stats_${token_tag}

_fs_hz=$("${python}" -c '
import sys
v = sys.argv[1].strip().lower()
hz = float(v[:-1]) * 1000 if v.endswith("k") else float(v)
assert 0 < hz == int(hz)
print(int(hz))' "${fs}" 2>/dev/null) || {
    err "--fs must be a positive whole sampling rate in Hz (16000) or kHz (16k), got '${fs}'"
    exit 2
}

# data sets processed in stage 2 (each once, in this order)
_all_sets=()
for _s in ${train_set} ${valid_set} ${test_sets}; do
    _dup=false
    for _t in "${_all_sets[@]+"${_all_sets[@]}"}"; do
        [ "${_t}" = "${_s}" ] && _dup=true
    done
    ${_dup} || _all_sets+=("${_s}")
done

_min() {
    local a=$1 b
    for b in "$@"; do
        [ "${b}" -lt "${a}" ] && a=${b}
    done
    echo "${a}"
}

# threads per process when ${1} processes share the machine (unless the user set OMP_NUM_THREADS)
_threads_for() {
    local n=$1 cores
    cores=$(nproc 2>/dev/null || echo 1)
    echo $(((cores / n) > 0 ? (cores / n) : 1))
}

current_stage=0
current_stage_name=""
_fail() {  # description log rc command...
    local desc=$1 logf=$2 rc=$3
    shift 3
    err "stage ${current_stage} (${current_stage_name}) failed: ${desc} exited with status ${rc}"
    err "  command: $*"
    err "  log:     ${logf}"
    if [ -f "${logf}" ]; then
        echo "---- last lines of ${logf} ----" >&2
        tail -n 25 "${logf}" >&2
        echo "----" >&2
    fi
    exit 1
}

# run_logged [--progress <name>] <description> <log> command...: output only to the log.
# With --progress (ESPnet trainings), pyscripts/train_progress.py prints one console line per
# epoch read from the growing log; it stops at the "# finished/failed at" line written here (or
# when this shell is gone), and the command's status alone decides the stage.
run_logged() {
    local progress="" follower="" rc=0
    if [ "$1" = --progress ]; then
        progress=$2
        shift 2
    fi
    local desc=$1 logf=$2
    shift 2
    mkdir -p "$(dirname "${logf}")"
    {
        echo "# $*"
        echo "# started at $(date)"
    } >"${logf}"
    if [ -n "${progress}" ]; then
        "${python}" "${pyscripts}/train_progress.py" --log "${logf}" --pid $$ --name "${progress}" &
        follower=$!
    fi
    "$@" >>"${logf}" 2>&1 || rc=$?
    if [ "${rc}" -ne 0 ]; then
        echo "# failed at $(date) with status ${rc}" >>"${logf}"
        [ -z "${follower}" ] || wait "${follower}" || true
        _fail "${desc}" "${logf}" "${rc}" "$@"
    fi
    echo "# finished at $(date)" >>"${logf}"
    [ -z "${follower}" ] || wait "${follower}" || true
}

# run_tee <description> <log> command...: output to the console and the log
run_tee() {
    local desc=$1 logf=$2 rc
    shift 2
    mkdir -p "$(dirname "${logf}")"
    {
        echo "# $*"
        echo "# started at $(date)"
    } >"${logf}"
    set +e
    "$@" 2>&1 | tee -a "${logf}"
    rc=${PIPESTATUS[0]}
    set -e
    if [ "${rc}" -ne 0 ]; then
        echo "# failed at $(date) with status ${rc}" >>"${logf}"
        _fail "${desc}" "${logf}" "${rc}" "$@"
    fi
    echo "# finished at $(date)" >>"${logf}"
}

# run_parallel <description> <log with JOB> <njobs> command... : JOB in the log name and in the
# arguments is replaced by 1..njobs; the jobs run in the background; all are waited for.
run_parallel() {
    local desc=$1 logpat=$2 njobs=$3
    shift 3
    local n pids=() failed=() logf threads
    threads=${OMP_NUM_THREADS:-$(_threads_for "${njobs}")}
    for n in $(seq 1 "${njobs}"); do
        logf=${logpat//JOB/${n}}
        mkdir -p "$(dirname "${logf}")"
        local args=("${@//JOB/${n}}")
        {
            echo "# ${args[*]}"
            echo "# started at $(date)"
        } >"${logf}"
        (OMP_NUM_THREADS=${threads} MKL_NUM_THREADS=${threads} "${args[@]}" >>"${logf}" 2>&1) &
        pids+=($!)
    done
    for n in $(seq 1 "${njobs}"); do
        logf=${logpat//JOB/${n}}
        if wait "${pids[$((n - 1))]}"; then
            echo "# finished at $(date)" >>"${logf}"
        else
            echo "# failed at $(date)" >>"${logf}"
            failed+=("${n}")
        fi
    done
    if [ ${#failed[@]} -gt 0 ]; then
        for n in "${failed[@]}"; do
            err "job ${n}/${njobs} of ${desc} failed; log: ${logpat//JOB/${n}}"
        done
        _fail "${desc} (${#failed[@]} of ${njobs} jobs)" "${logpat//JOB/${failed[0]}}" 1 "$@"
    fi
}

# split the keys of a Kaldi file into <n> key files <prefix>.<i>.scp (contiguous blocks)
split_keys() {
    local src=$1 n=$2 prefix=$3
    awk -v n="${n}" -v prefix="${prefix}" '
        { keys[NR] = $1 }
        END {
            per = int(NR / n); extra = NR % n; k = 0
            for (i = 1; i <= n; i++) {
                f = prefix "." i ".scp"; printf "" > f
                m = per + (i <= extra ? 1 : 0)
                for (j = 0; j < m; j++) { k++; print keys[k] > f }
                close(f)
            }
        }' "${src}"
}

_require_file() {  # file hint
    if [ ! -s "$1" ]; then
        err "stage ${current_stage} (${current_stage_name}): $1 is missing or empty; $2"
        exit 1
    fi
}

_begin_stage() {
    current_stage=$1
    current_stage_name=$2
    log "Stage $1: $2"
}

_frontend_signature() {  # the config's front-end settings, as one line per key
    local k
    for k in frontend frontend_conf; do
        echo "${k}: $("${python}" "${pyscripts}/config_value.py" "${asr_config}" "${k}")"
    done
    echo "fs: ${_fs_hz}"
}

# ESPnet options shared by stats collection and training
_token_opts=(--token_type "${token_type}" --token_list "${token_list}" --bpemodel "${bpemodel}"
    --non_linguistic_symbols none --cleaner none --g2p none)

# ---------------------------------------------------------------------------------------------
if _run_stage 1; then
    _begin_stage 1 "data preparation"
    if [ ! -x local/data.sh ]; then
        err "stage 1 (data preparation): local/data.sh not found or not executable in $(pwd)"
        exit 1
    fi
    # local/data.sh runs its python helpers with $PYTHON
    # shellcheck disable=SC2086
    PYTHON="${PYTHON:-${python}}" run_tee "local/data.sh" "${expdir}/logs/data_prep.log" \
        local/data.sh ${local_data_opts}
    for _s in "${_all_sets[@]}"; do
        for _f in wav.scp text; do
            _require_file "data/${_s}/${_f}" "local/data.sh did not write it"
        done
    done
fi

# ---------------------------------------------------------------------------------------------
if _run_stage 2; then
    _begin_stage 2 "format data: ${_fs_hz} Hz mono wav, drop unusable utterances"
    for _s in "${_all_sets[@]}"; do
        _require_file "data/${_s}/wav.scp" "run stage 1 (local/data.sh) first"
        _dur_opts=()
        if [ "${_s}" = "${train_set}" ] || [ "${_s}" = "${valid_set}" ]; then
            _dur_opts=(--min_dur "${min_wav_duration}" --max_dur "${max_wav_duration}")
        fi
        run_tee "formatting ${_s}" "${expdir}/logs/format.${_s}.log" \
            "${python}" "${pyscripts}/format_wav_scp.py" --src "data/${_s}" \
            --dst "${data_feats}/${_s}" --fs "${_fs_hz}" --nj "${nj}" --name "${_s}" \
            "${_dur_opts[@]+"${_dur_opts[@]}"}"
    done
    log "Duration limits [${min_wav_duration}, ${max_wav_duration}] s applied to" \
        "${train_set} and ${valid_set} only; test sets keep every readable utterance"
fi

# ---------------------------------------------------------------------------------------------
if _run_stage 3; then
    _begin_stage 3 "token list (${token_type}) -> ${token_list}"
    _require_file "${data_feats}/${train_set}/text" "run stage 2 first"
    mkdir -p "${token_dir}"
    if [ "${token_type}" = bpe ]; then
        run_logged "sentencepiece training" "${expdir}/logs/token_list.${token_tag}.spm.log" \
            "${python}" "${pyscripts}/train_sentencepiece.py" \
            --text "${data_feats}/${train_set}/text" --model_prefix "${bpeprefix}" \
            --vocab_size "${nbpe}" --model_type "${bpemode}" \
            --character_coverage "${bpe_char_cover}" --user_defined_symbols "${bpe_nlsyms}"
        _tok_opts=(--token_type bpe --bpemodel "${bpemodel}")
    else
        _tok_opts=(--token_type char --non_linguistic_symbols none)
    fi
    _log=${expdir}/logs/token_list.${token_tag}.log
    run_logged "token list" "${_log}" \
        "${python}" -m espnet2.bin.tokenize_text "${_tok_opts[@]}" \
        --input "${data_feats}/${train_set}/text" --output "${token_list}" --field 2- \
        --cleaner none --g2p none --write_vocabulary true \
        --add_symbol "<blank>:0" --add_symbol "<unk>:1" --add_symbol "<sos/eos>:-1"
    run_logged "token list check" "${_log%.log}.check.log" \
        "${python}" "${pyscripts}/check_token_list.py" "${token_list}"
    log "$(wc -l <"${token_list}") tokens in ${token_list}"
fi

# ---------------------------------------------------------------------------------------------
if _run_stage 4; then
    _begin_stage 4 "collect feature statistics -> ${asr_stats_dir}"
    _require_file "${token_list}" "run stage 3 first"
    _require_file "${data_feats}/${train_set}/wav.scp" "run stage 2 first"
    _require_file "${data_feats}/${valid_set}/wav.scp" "run stage 2 first"
    _logdir=${asr_stats_dir}/logdir
    rm -rf "${_logdir}" "${asr_stats_dir}/train" "${asr_stats_dir}/valid"
    mkdir -p "${_logdir}"
    _ntrain=$(wc -l <"${data_feats}/${train_set}/wav.scp")
    _nvalid=$(wc -l <"${data_feats}/${valid_set}/wav.scp")
    _nj=$(_min "${nj}" "${_ntrain}" "${_nvalid}")
    split_keys "${data_feats}/${train_set}/wav.scp" "${_nj}" "${_logdir}/train"
    split_keys "${data_feats}/${valid_set}/wav.scp" "${_nj}" "${_logdir}/valid"
    log "collecting stats with ${_nj} job(s); logs: ${_logdir}/stats.*.log"
    # shellcheck disable=SC2086
    run_parallel "stats collection" "${_logdir}/stats.JOB.log" "${_nj}" \
        "${python}" -m espnet_omnirouter.bin.asr_train \
        --collect_stats true --use_preprocessor true "${_token_opts[@]}" \
        --train_data_path_and_name_and_type "${data_feats}/${train_set}/wav.scp,speech,sound" \
        --train_data_path_and_name_and_type "${data_feats}/${train_set}/text,text,text" \
        --valid_data_path_and_name_and_type "${data_feats}/${valid_set}/wav.scp,speech,sound" \
        --valid_data_path_and_name_and_type "${data_feats}/${valid_set}/text,text,text" \
        --train_shape_file "${_logdir}/train.JOB.scp" \
        --valid_shape_file "${_logdir}/valid.JOB.scp" \
        --output_dir "${_logdir}/stats.JOB" \
        --config "${asr_config}" --frontend_conf fs="${_fs_hz}" ${asr_args}
    _in=()
    for _i in $(seq 1 "${_nj}"); do
        _in+=(--input_dir "${_logdir}/stats.${_i}")
    done
    run_logged "stats aggregation" "${_logdir}/aggregate.log" \
        "${python}" -m espnet2.bin.aggregate_stats_dirs "${_in[@]}" --output_dir "${asr_stats_dir}"
    _ntok=$(wc -l <"${token_list}")
    for _p in train valid; do
        awk -v N="${_ntok}" '{ print $0 "," N }' "${asr_stats_dir}/${_p}/text_shape" \
            >"${asr_stats_dir}/${_p}/text_shape.${token_type}"
    done
    _require_file "${asr_stats_dir}/train/feats_stats.npz" "see ${_logdir}/aggregate.log"
    # remember which front-end the statistics belong to (checked by stage 5 for global_mvn)
    _frontend_signature >"${asr_stats_dir}/frontend_signature"
    log "statistics: ${asr_stats_dir}/train/feats_stats.npz"
fi

# ---------------------------------------------------------------------------------------------
# stage 5, with --use_lm true: the LM, on the training (and validation) transcripts, with the ASR
# model's token list, so that its scores fuse with the ASR decoder's token by token
_train_lm() {
    _require_file "${lm_config}" "--lm_config not found"
    _require_file "${data_feats}/${train_set}/text" "run stage 2 first"
    _require_file "${data_feats}/${valid_set}/text" "run stage 2 first"
    log "language model -> ${lm_exp} (log: ${lm_exp}/train.log)"
    local _logdir=${lm_stats_dir}/logdir _p _ntok
    rm -rf "${_logdir}" "${lm_stats_dir}/train" "${lm_stats_dir}/valid"
    mkdir -p "${_logdir}"
    split_keys "${data_feats}/${train_set}/text" 1 "${_logdir}/train"
    split_keys "${data_feats}/${valid_set}/text" 1 "${_logdir}/valid"
    # shellcheck disable=SC2086
    run_logged "LM statistics" "${_logdir}/stats.log" \
        "${python}" -m espnet2.bin.lm_train \
        --collect_stats true --use_preprocessor true "${_token_opts[@]}" \
        --train_data_path_and_name_and_type "${data_feats}/${train_set}/text,text,text" \
        --valid_data_path_and_name_and_type "${data_feats}/${valid_set}/text,text,text" \
        --train_shape_file "${_logdir}/train.1.scp" --valid_shape_file "${_logdir}/valid.1.scp" \
        --output_dir "${lm_stats_dir}" --config "${lm_config}" ${lm_args}
    _ntok=$(wc -l <"${token_list}")
    for _p in train valid; do
        _require_file "${lm_stats_dir}/${_p}/text_shape" "see ${_logdir}/stats.log"
        awk -v N="${_ntok}" '{ print $0 "," N }' "${lm_stats_dir}/${_p}/text_shape" \
            >"${lm_stats_dir}/${_p}/text_shape.${token_type}"
    done
    mkdir -p "${lm_exp}"
    # shellcheck disable=SC2086
    run_logged --progress LM "LM training" "${lm_exp}/train.log" \
        "${python}" -m espnet2.bin.lm_train \
        --use_preprocessor true "${_token_opts[@]}" \
        --train_data_path_and_name_and_type "${data_feats}/${train_set}/text,text,text" \
        --train_shape_file "${lm_stats_dir}/train/text_shape.${token_type}" \
        --valid_data_path_and_name_and_type "${data_feats}/${valid_set}/text,text,text" \
        --valid_shape_file "${lm_stats_dir}/valid/text_shape.${token_type}" \
        --fold_length "${asr_text_fold_length}" --resume true --ngpu "$((ngpu > 0 ? 1 : 0))" \
        --output_dir "${lm_exp}" --config "${lm_config}" ${lm_args}
    log "language model finished: ${lm_exp}"
}

if _run_stage 5; then
    _begin_stage 5 "training -> ${asr_exp} (log: ${asr_exp}/train.log)"
    _require_file "${asr_config}" "--asr_config not found"
    _require_file "${asr_stats_dir}/train/speech_shape" "run stage 4 first"
    _require_file "${token_list}" "run stage 3 first"
    _norm=${feats_normalize}
    [ -n "${_norm}" ] || _norm=$("${python}" "${pyscripts}/config_value.py" "${asr_config}" normalize)
    _norm_opts=()
    if [ "${_norm}" = global_mvn ]; then
        if [ "$(_frontend_signature)" != "$(cat "${asr_stats_dir}/frontend_signature" 2>/dev/null)" ]; then
            err "stage 5 (training): ${asr_stats_dir} holds statistics of another front-end" \
                "than ${asr_config}'s; rerun stage 4 or give --asr_stats_dir"
            exit 1
        fi
        _norm_opts=(--normalize global_mvn
            --normalize_conf "stats_file=${asr_stats_dir}/train/feats_stats.npz")
    elif [ -n "${feats_normalize}" ]; then
        _norm_opts=(--normalize "${feats_normalize}")
    fi
    if ${use_lm}; then
        _train_lm
    fi
    _dist_opts=(--ngpu "${ngpu}")
    if [ "${ngpu}" -gt 1 ]; then
        _dist_opts+=(--multiprocessing_distributed true)
    fi
    mkdir -p "${asr_exp}"
    # shellcheck disable=SC2086
    run_logged --progress ASR "training" "${asr_exp}/train.log" \
        "${python}" -m espnet_omnirouter.bin.asr_train \
        --use_preprocessor true "${_token_opts[@]}" \
        --train_data_path_and_name_and_type "${data_feats}/${train_set}/wav.scp,speech,sound" \
        --train_data_path_and_name_and_type "${data_feats}/${train_set}/text,text,text" \
        --train_shape_file "${asr_stats_dir}/train/speech_shape" \
        --train_shape_file "${asr_stats_dir}/train/text_shape.${token_type}" \
        --valid_data_path_and_name_and_type "${data_feats}/${valid_set}/wav.scp,speech,sound" \
        --valid_data_path_and_name_and_type "${data_feats}/${valid_set}/text,text,text" \
        --valid_shape_file "${asr_stats_dir}/valid/speech_shape" \
        --valid_shape_file "${asr_stats_dir}/valid/text_shape.${token_type}" \
        --fold_length "$((asr_speech_fold_length * 100))" --fold_length "${asr_text_fold_length}" \
        --resume true "${_dist_opts[@]}" \
        --output_dir "${asr_exp}" \
        --config "${asr_config}" --frontend_conf fs="${_fs_hz}" \
        "${_norm_opts[@]+"${_norm_opts[@]}"}" ${asr_args}
    log "training finished: ${asr_exp}"
fi

# ---------------------------------------------------------------------------------------------
_model_resolved=false
_resolve_model() {  # sets inference_asr_model and inference_tag (once)
    local m
    ${_model_resolved} && return 0
    m=$("${python}" "${pyscripts}/resolve_model.py" --exp_dir "${asr_exp}" \
        --model "${inference_asr_model}") || {
        err "stage ${current_stage} (${current_stage_name}): no model to use (see above)"
        exit 1
    }
    inference_asr_model=${m}
    _model_resolved=true
    _lm_opts=()
    if ${use_lm}; then
        m=$("${python}" "${pyscripts}/resolve_model.py" --exp_dir "${lm_exp}") || {
            err "stage ${current_stage} (${current_stage_name}): no LM to use in ${lm_exp} (train it:" \
                "stage 5 with --use_lm true and --lm_config)"
            exit 1
        }
        _lm_opts=(--lm_train_config "${lm_exp}/config.yaml" --lm_file "${lm_exp}/${m}")
    fi
    if [ -z "${inference_tag}" ]; then
        if [ -n "${inference_config}" ]; then
            inference_tag="$(basename "${inference_config}" .yaml)"
        else
            inference_tag="decode"
        fi
        inference_tag+="_asr_model_$(echo "${inference_asr_model}" | sed -e 's/\//_/g' -e 's/\.[^.]*$//')"
        if ${use_lm}; then
            inference_tag+="_lm_$(basename "${lm_exp}" | sed -e 's/^lm_//')"
        fi
        inference_tag+="$(_args_tag "${inference_args}")"
        if ${use_streaming}; then
            inference_tag+="_streaming"
        fi
    fi
}

if _run_stage 6; then
    _begin_stage 6 "decoding"
    _resolve_model
    log "model: ${asr_exp}/${inference_asr_model}; decode dir: ${asr_exp}/${inference_tag}"
    _ngpu_dec=0
    ${gpu_inference} && _ngpu_dec=1
    _conf_opts=()
    [ -n "${inference_config}" ] && _conf_opts=(--config "${inference_config}")
    _decoder=espnet_omnirouter.bin.asr_inference
    ${use_streaming} && _decoder=espnet_omnirouter.bin.asr_inference_streaming
    for _s in ${test_sets}; do
        _require_file "${data_feats}/${_s}/wav.scp" "run stage 2 first"
        _dir=${asr_exp}/${inference_tag}/${_s}
        _logdir=${_dir}/logdir
        rm -rf "${_logdir}"
        mkdir -p "${_logdir}"
        _n=$(wc -l <"${data_feats}/${_s}/wav.scp")
        _nj=$(_min "${inference_nj}" "${_n}")
        split_keys "${data_feats}/${_s}/wav.scp" "${_nj}" "${_logdir}/keys"
        log "decoding ${_s}: ${_n} utterances, ${_nj} job(s); logs: ${_logdir}/asr_inference.*.log"
        _t0=$(date +%s.%N)
        # shellcheck disable=SC2086
        run_parallel "decoding ${_s}" "${_logdir}/asr_inference.JOB.log" "${_nj}" \
            "${python}" -m "${_decoder}" \
            --batch_size "${batch_size}" --ngpu "${_ngpu_dec}" \
            --data_path_and_name_and_type "${data_feats}/${_s}/wav.scp,speech,sound" \
            --key_file "${_logdir}/keys.JOB.scp" \
            --asr_train_config "${asr_exp}/config.yaml" \
            --asr_model_file "${asr_exp}/${inference_asr_model}" \
            --output_dir "${_logdir}/output.JOB" "${_lm_opts[@]+"${_lm_opts[@]}"}" \
            "${_conf_opts[@]+"${_conf_opts[@]}"}" ${inference_args}
        _t1=$(date +%s.%N)
        for _f in token token_int score text; do
            for _i in $(seq 1 "${_nj}"); do
                if [ -f "${_logdir}/output.${_i}/1best_recog/${_f}" ]; then
                    cat "${_logdir}/output.${_i}/1best_recog/${_f}"
                fi
            done | LC_ALL=C sort -k1,1 >"${_dir}/${_f}"
        done
        _ndec=$(wc -l <"${_dir}/text")
        if [ "${_ndec}" -ne "${_n}" ]; then
            log "WARNING: ${_s}: ${_ndec} hypotheses for ${_n} utterances (see ${_logdir})"
        fi
        _keys=()
        _logs=()
        for _i in $(seq 1 "${_nj}"); do
            _keys+=("${_logdir}/keys.${_i}.scp")
            _logs+=("${_logdir}/asr_inference.${_i}.log")
        done
        run_logged "RTF computation" "${_logdir}/rtf.log" \
            "${python}" "${pyscripts}/calc_rtf.py" --name "${_s}" \
            --utt2num_samples "${data_feats}/${_s}/utt2num_samples" --keys "${_keys[@]}" \
            --logs "${_logs[@]}" --fs "${_fs_hz}" --start "${_t0}" --end "${_t1}" \
            --nj "${_nj}" --out "${_dir}/rtf.txt"
        log "$(grep '^RTF ' "${_logdir}/rtf.log" | tail -n 1) (${_dir}/rtf.txt)"
    done
fi

# ---------------------------------------------------------------------------------------------
if _run_stage 7; then
    _begin_stage 7 "scoring (WER, CER)"
    _resolve_model
    for _s in ${test_sets}; do
        _dir=${asr_exp}/${inference_tag}/${_s}
        if [ ! -f "${_dir}/text" ]; then
            err "stage 7 (scoring): ${_dir}/text not found; run stage 6 first"
            exit 1
        fi
        run_logged "scoring ${_s}" "${_dir}/score.log" \
            "${python}" "${pyscripts}/score.py" --ref "${data_feats}/${_s}/text" \
            --hyp "${_dir}/text" --dir "${_dir}" --name "${_s}"
        grep -E '^(WER|CER) ' "${_dir}/score.log" | while read -r _l; do log "${_l}"; done
    done
    run_logged "RESULTS.md" "${asr_exp}/show_results.log" \
        "${python}" "${pyscripts}/show_results.py" --exp "${asr_exp}" --out "${asr_exp}/RESULTS.md"
    log "results: ${asr_exp}/RESULTS.md"
    cat "${asr_exp}/RESULTS.md"
fi

# ---------------------------------------------------------------------------------------------
if _run_stage 8; then
    _begin_stage 8 "pack -> ${asr_exp}/asr_model.zip"
    _resolve_model
    _require_file "${asr_exp}/RESULTS.md" "run stage 7 first"
    _opts=(--option "${asr_exp}/RESULTS.md")
    if [ "${token_type}" = bpe ]; then
        _opts+=(--option "${bpemodel}")
    fi
    if [ -f "${asr_stats_dir}/train/feats_stats.npz" ]; then
        _opts+=(--option "${asr_stats_dir}/train/feats_stats.npz")
    fi
    if [ -d "${asr_exp}/images" ]; then
        _opts+=(--option "${asr_exp}/images")
    fi
    run_logged "packing" "${asr_exp}/pack.log" \
        "${python}" -m espnet2.bin.pack asr \
        --asr_train_config "${asr_exp}/config.yaml" \
        --asr_model_file "${asr_exp}/${inference_asr_model}" "${_lm_opts[@]+"${_lm_opts[@]}"}" \
        "${_opts[@]}" --outpath "${asr_exp}/asr_model.zip"
    log "packed model: ${asr_exp}/asr_model.zip"
fi

# ---------------------------------------------------------------------------------------------
if _run_stage 9; then
    if [ -z "${hf_repo}" ]; then
        log "Stage 9: upload skipped (no --hf_repo given)"
    else
        _begin_stage 9 "model card and Hugging Face upload -> ${hf_repo}"
        _require_file "${asr_exp}/asr_model.zip" "run stage 8 first"
        rm -rf "${asr_exp}/hf_upload"
        run_logged "model card" "${asr_exp}/hf_upload.log" \
            "${python}" "${pyscripts}/make_model_card.py" --zip "${asr_exp}/asr_model.zip" \
            --config "${asr_exp}/config.yaml" --results "${asr_exp}/RESULTS.md" --hf_repo "${hf_repo}" \
            --train_set "${train_set}" --utt2num_samples "${data_feats}/${train_set}/utt2num_samples" \
            --fs "${_fs_hz}" --out "${asr_exp}/hf_upload"
        if [ "${dry_run}" = true ]; then
            log "dry run: model folder and card ready in ${asr_exp}/hf_upload (not uploaded)"
        else
            run_logged "upload" "${asr_exp}/hf_upload.log" \
                "${python}" -c 'import sys; from huggingface_hub import HfApi; api = HfApi(); api.create_repo(sys.argv[1], exist_ok=True); api.upload_folder(repo_id=sys.argv[1], folder_path=sys.argv[2])' \
                "${hf_repo}" "${asr_exp}/hf_upload"
            log "uploaded to https://huggingface.co/${hf_repo}"
        fi
    fi
fi

# ---------------------------------------------------------------------------------------------
if _run_stage 10; then
    _encoder=$("${python}" "${pyscripts}/config_value.py" "${asr_exp}/config.yaml" encoder)
    case "${_encoder}" in
        switch_* | omni_router_*)
            _begin_stage 10 "routing analysis -> ${asr_exp}/routing_analysis"
            _require_file "${asr_exp}/asr_model.zip" "run stage 8 first"
            _data_opts=()
            for _s in ${test_sets}; do
                _data_opts+=(--data "${data_feats}/${_s}")
            done
            run_logged "routing analysis" "${asr_exp}/routing_analysis.log" \
                "${python}" -m espnet_omnirouter.bin.analyze_routing --model "${asr_exp}/asr_model.zip" \
                "${_data_opts[@]}" --out "${asr_exp}/routing_analysis" --max_utts "${analysis_max_utts}" \
                --batch_size 1
            log "routing analysis: ${asr_exp}/routing_analysis/summary.md"
            ;;
        *) log "Stage 10: routing analysis skipped (encoder '${_encoder}' has no MoE)" ;;
    esac
fi

log "Successfully finished stages ${stage}-$(_min "${stop_stage}" 10) [elapsed=${SECONDS}s]"
