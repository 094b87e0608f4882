#!/usr/bin/env bash
# Quality benchmark: dense vs Switch vs Omni-router Conformer on synth_en, in-domain and out of domain.
#
#   benchmarks/quality.sh [options]
#
# One command: makes the synth_en corpus once, trains the three models (conf/train_asr_conformer.yaml,
# conf/train_asr_switch_conformer.yaml, conf/train_asr_omni_router_conformer.yaml: same width, depth
# and FFN size, 8 experts) on the same training set with the same seed and schedule, decodes and
# scores every test set, packs, runs the routing analysis (MoE models), and writes
# <out>/quality.{md,json} and <out>/quality_loss.png with benchmarks/quality_report.py.
# With --seeds "1 2 3" every model is trained once per seed (the data are made once) and the report
# gives mean and standard deviation over the seeds.
#
# It runs the recipe's own stages (egs2/synth_en/asr1/run.sh -> egs2/TEMPLATE/asr1/asr.sh) in a
# work directory made of links to the recipe (default <recipe_dir>/exp/quality, ignored by git), so
# the recipe's own data/, dump/ and exp/ (e.g. a `make demo` run) are never touched:
#   <workdir>/data, dump, downloads                  the corpus (stages 1-3)
#   <workdir>/<expdir>/asr_stats                     shapes for batching (stage 4, shared)
#   <workdir>/<expdir>/seed<S>/asr_<model>/          training, <decode tag>/<set>/score_{wer,cer},
#                                                    RESULTS.md, asr_model.zip, routing_analysis/
#   <workdir>/<expdir>/seed<S>/quality.<model>.log   console output of that model's run.sh
# Re-running continues: the corpus is not re-synthesised when complete, a model whose run finished
# (<exp>/quality.done) is kept (delete that file to run it again), an unfinished training resumes
# from its last checkpoint (earlier train.log files are kept as train.log.<time>, so the loss curves
# and training times stay complete), decoding and scoring are redone.
# The report's inputs of every finished run (train.log*, config.yaml, RESULTS.md, the score
# summaries, routing_analysis/summary.{json,md}: ~150 KB, no checkpoints) are copied to
# <out>/<report_name>_runs/seed<S>/asr_<model>/; a later call (e.g. on a fresh clone, where exp/ is
# gone) copies them back and trains only the runs that are missing there.
#
# Default size: the corpus of `make demo` (3 h of audio, character targets) and 9 epochs (the demo
# trains the Omni model 8 epochs with ESPnet's default seed 0, to fit its time budget; trainings are
# deterministic, so its epochs 1-8 are those of `--seeds 0` here; the default seed is 1):
#   --local_data_opts "--train_hours 3 --dev_utts 200 --test_utts 150"  --asr_args "--max_epoch 9"
# The models are compared without the recipe's LM (the LM would mask acoustic differences).
# Time on 2 quiet CPU cores, measured in one piece (`benchmarks/quality.sh`, no options, on a fresh
# clone at f9441ba, 2026-11-27; console lines in benchmarks/results/quality_seed1_console.log):
#   corpus, formatting, tokens, shapes                                                 1.7 min
#   dense:  training 9 epochs (2.8-3.7 min each) 32.1 min, decoding 2.8 min, pack          35.0 min
#   Switch: training 9 epochs (3.0-4.2 min each) 34.0 min, decoding 3.4 min, analysis      38.2 min
#   Omni:   training 9 epochs (3.6-5.1 min each) 40.9 min, decoding 2.3 min, analysis      44.0 min
#   report                                                                             0.2 min
#   total                                                                 7146 s = 119.1 min
# That is under 2 hours by less than a minute: this VM's speed varies (with nothing else running,
# one model's epochs took 2.8-3.7, 3.0-4.2 and 3.6-5.1 min; Omni's took 3.6 in other runs).
# On a slower machine --asr_args "--max_epoch 8" saves ~3.5 min per model.
# --seeds "1 2 3" takes three times the training and decoding time.  Never run two trainings on
# the same 2 cores (--jobs 1): OpenMP oversubscription made epochs 3-5x slower.  Use another
# --workdir (or --expdir) for other configs: a training resumes from the checkpoint it finds.
#
# Options (--name value or --name=value):
#   --recipe_dir DIR        recipe to run                                  [egs2/synth_en/asr1]
#   --workdir DIR           where the corpus and experiments go            [<recipe_dir>/exp/quality]
#                           (give the recipe dir itself to share its data/ and dump/)
#   --expdir DIR            experiment root inside the work dir           [exp]
#   --python PY             interpreter with espnet_omnirouter            [<repo>/.venv/bin/python or python3]
#   --local_data_opts STR   options of local/data.sh (corpus size)         [see above]
#   --asr_args STR          extra training arguments (all models)          [--max_epoch 9]
#   --inference_config YAML decoding config (relative to the work dir)     [conf/decode_asr.yaml]
#   --inference_args STR    extra decoding arguments                       []
#   --configs STR           "name=config.yaml ..." in report order         [dense=conf/train_asr_conformer.yaml
#                                                                           switch=conf/train_asr_switch_conformer.yaml
#                                                                           omni=conf/train_asr_omni_router_conformer.yaml]
#   --seeds STR             training seeds, e.g. "1 2 3"                    [1]
#   --test_sets STR         test sets (empty: run.sh's five)               []
#   --ood_sets STR          out-of-domain sets averaged in the report      [test_unseen_voice test_noisy test_tempo test_real]
#   --run_opts STR          more options for every run.sh call, e.g. "--ngpu 1" or "--nj 2 --inference_nj 1"
#                           (the models are decoded without an LM; "--use_lm true" fuses the recipe's LM)
#   --jobs N                models trained/decoded at the same time        [1]
#                           (>1 only for smoke tests: parallel runs distort the training times)
#   --stage N / --stop_stage N   1 corpus + stats, 2 models, 3 report      [1 / 3]
#   --out DIR               report directory                               [<repo>/benchmarks/results]
#   --report_name NAME      report files <out>/NAME.{md,json}, NAME_loss.png [quality]
#   --streaming_decode BOOL also decode every model chunk by chunk (run.sh --use_streaming true, batch 1)
#                           into <decode tag>_streaming; the report sets it beside the full-utterance
#                           decoding (streaming encoders only: contextual_block_*)   [false]
#                           A finished run without it gets only the streaming decoding (marker
#                           <exp>/quality.streaming.done); it needs the run's checkpoint (not in <out>).
#   --report_args STR       more options of quality_report.py (quoted as in a shell), e.g. reusing rows of an earlier report:
#                           "--reuse benchmarks/results/quality.json --reuse_models switch omni"
set -euo pipefail

log() { echo "$(date '+%Y-%m-%dT%H:%M:%S') (quality.sh) $*"; }
err() { log "ERROR: $*" >&2; }

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(dirname "${here}")"
command_line="benchmarks/quality.sh"
[ $# -eq 0 ] || command_line+="$(printf ' %q' "$@")"

recipe_dir=${repo}/egs2/synth_en/asr1
workdir=
expdir=exp
python=
local_data_opts="--train_hours 3 --dev_utts 200 --test_utts 150"
asr_args="--max_epoch 9"
inference_config=conf/decode_asr.yaml
inference_args=
configs="dense=conf/train_asr_conformer.yaml switch=conf/train_asr_switch_conformer.yaml omni=conf/train_asr_omni_router_conformer.yaml"
seeds=1
test_sets=
ood_sets="test_unseen_voice test_noisy test_tempo test_real"
run_opts=
jobs=1
stage=1
stop_stage=3
out=${repo}/benchmarks/results
report_name=quality
report_args=
streaming_decode=false

_options=(recipe_dir workdir expdir python local_data_opts asr_args inference_config inference_args
    configs seeds test_sets ood_sets run_opts jobs stage stop_stage out report_name report_args streaming_decode)

usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed -e '$d' -e 's/^# \{0,1\}//'; }

while [ $# -gt 0 ]; do
    case "$1" in
        -h | --help) usage; exit 0 ;;
        --*=*) _name="${1%%=*}"; _value="${1#*=}"; shift ;;
        --*)
            [ $# -ge 2 ] || { err "option $1 needs a value"; exit 2; }
            _name="$1"; _value="$2"; shift 2 ;;
        *) err "unexpected argument '$1' (options are --name value; see --help)"; exit 2 ;;
    esac
    _name="${_name#--}"
    _name="${_name//-/_}"
    _known=false
    for _o in "${_options[@]}"; do [ "${_o}" = "${_name}" ] && _known=true; done
    ${_known} || { err "unknown option --${_name} (see --help)"; exit 2; }
    printf -v "${_name}" '%s' "${_value}"
done

for _o in jobs stage stop_stage; do
    [[ "${!_o}" =~ ^[0-9]+$ ]] || { err "--${_o} must be a non-negative integer, got '${!_o}'"; exit 2; }
done
[ "${jobs}" -ge 1 ] || jobs=1
case "${streaming_decode}" in
    true | false) ;;
    *) err "--streaming_decode must be true or false, got '${streaming_decode}'"; exit 2 ;;
esac
for _s in ${seeds}; do
    [[ "${_s}" =~ ^[0-9]+$ ]] || { err "--seeds: '${_s}' is not a non-negative integer"; exit 2; }
done
[ -n "${seeds// /}" ] || { err "--seeds is empty"; exit 2; }
[[ "${report_name}" =~ ^[A-Za-z0-9_.-]+$ ]] || { err "--report_name: '${report_name}' is not a plain file name"; exit 2; }

if [ -z "${python}" ]; then
    if [ -x "${repo}/.venv/bin/python" ]; then python=${repo}/.venv/bin/python; else python=python3; fi
fi
command -v "${python}" >/dev/null 2>&1 || { err "--python ${python}: not found"; exit 2; }
# run.sh changes directory: make the interpreter and the output absolute
[[ "${python}" == */* ]] && python="$(cd "$(dirname "${python}")" && pwd)/$(basename "${python}")"
mkdir -p "${out}"
out="$(cd "${out}" && pwd)"

[ -d "${recipe_dir}" ] || { err "--recipe_dir ${recipe_dir}: no such directory"; exit 2; }
recipe_dir="$(cd "${recipe_dir}" && pwd)"
for _f in run.sh asr.sh pyscripts conf local; do
    [ -e "${recipe_dir}/${_f}" ] || { err "${recipe_dir}/${_f} is missing: not a recipe dir"; exit 2; }
done
[ -n "${workdir}" ] || workdir=${recipe_dir}/exp/quality
mkdir -p "${workdir}"
workdir="$(cd "${workdir}" && pwd)"
if [ "${workdir}" != "${recipe_dir}" ]; then
    # a recipe copy made of links (run.sh works in the directory of the link, not of its target)
    for _f in run.sh asr.sh pyscripts conf local; do
        ln -sfn "${recipe_dir}/${_f}" "${workdir}/${_f}"
    done
fi
# --report_args split like a shell command line (quotes keep e.g. a --note in one piece), its
# existing relative paths (--spread_from, --reuse) made absolute before the cd into the work dir
mapfile -t _report_args < <("${python}" -c '
import os, shlex, sys
for a in shlex.split(sys.argv[1]):
    print(os.path.abspath(a) if not a.startswith("-") and os.path.exists(a) else a)' "${report_args}")
cd "${workdir}"

# models: "name=config" (a bare path is named after its file: train_asr_x.yaml -> x)
names=()
cfgs=()
for _c in ${configs}; do
    if [[ "${_c}" == *=* ]]; then
        _n="${_c%%=*}"; _p="${_c#*=}"
    else
        _p="${_c}"; _n="$(basename "${_p}" .yaml)"; _n="${_n#train_asr_}"
    fi
    [[ "${_n}" =~ ^[A-Za-z0-9_.-]+$ ]] || { err "--configs: bad model name '${_n}'"; exit 2; }
    [ -f "${_p}" ] || { err "--configs: ${_p} not found (relative paths are relative to ${workdir})"; exit 2; }
    for _m in "${names[@]+"${names[@]}"}"; do
        [ "${_m}" != "${_n}" ] || { err "--configs: model name '${_n}' given twice"; exit 2; }
    done
    if ${streaming_decode}; then
        _enc="$(sed -n 's/^encoder:[[:space:]]*\([^[:space:]#]*\).*/\1/p' "${_p}")"
        [[ "${_enc}" == *contextual_block* ]] || {
            err "--streaming_decode true: ${_p} has encoder '${_enc}', not a streaming (contextual_block_*) encoder"
            exit 2
        }
    fi
    names+=("${_n}")
    cfgs+=("${_p}")
done
[ ${#names[@]} -gt 0 ] || { err "--configs is empty"; exit 2; }

# decode dir name: like asr.sh's default without the checkpoint name, so the report can find it
inference_tag=decode
[ -n "${inference_config}" ] && inference_tag="$(basename "${inference_config}" .yaml)"
[ "${inference_tag#decode}" != "${inference_tag}" ] || inference_tag="decode_${inference_tag}"
if [ -n "${inference_args}" ]; then
    inference_tag+="$(echo "${inference_args}" | sed -e 's/--/_/g' -e 's/[ |=/]//g')"
fi

# the acoustic models are compared without the recipe's LM (--run_opts "--use_lm true" adds it)
common=(--python "${python}" --asr_stats_dir "${expdir}/asr_stats" --use_lm false)
[ -n "${test_sets}" ] && common+=(--test_sets "${test_sets}")
[ -n "${inference_config}" ] && common+=(--inference_config "${inference_config}")
read -r -a _run_opts <<<"${run_opts}"

log "${command_line}"
log "work dir ${workdir}; models: ${names[*]}; seeds: ${seeds}; decode tag: ${inference_tag}"
SECONDS=0

# ---------------------------------------------------------------------------------------------
if [ "${stage}" -le 1 ] && [ "${stop_stage}" -ge 1 ]; then
    log "Step 1: corpus, formatting, tokens and shape statistics (once for all models)"
    ./run.sh "${common[@]}" --stage 1 --stop_stage 4 --expdir "${expdir}" --asr_config "${cfgs[0]}" \
        --local_data_opts "${local_data_opts}" "${_run_opts[@]+"${_run_opts[@]}"}"
fi

# ---------------------------------------------------------------------------------------------
run_model() {  # seed name config: stages 5-10 of one model, output to the console or a log
    local s=$1 name=$2 cfg=$3
    local exp=${expdir}/seed${s}/asr_${name}
    mkdir -p "${exp}"
    if [ -f "${exp}/train.log" ]; then
        # asr.sh rewrites train.log; a resumed training logs only its remaining epochs
        mv "${exp}/train.log" "${exp}/train.log.$(date -r "${exp}/train.log" +%Y%m%dT%H%M%S)"
    fi
    ./run.sh "${common[@]}" --stage 5 --stop_stage 10 --expdir "${expdir}/seed${s}" \
        --asr_config "${cfg}" --asr_tag "${name}" --asr_args "--seed ${s} ${asr_args}" \
        --inference_tag "${inference_tag}" --inference_args "${inference_args}" \
        "${_run_opts[@]+"${_run_opts[@]}"}" &&
        "${python}" "${here}/quality_report.py" --count_params "${exp}" && touch "${exp}/quality.done" &&
        { ! ${streaming_decode} || run_streaming "${s}" "${name}" "${cfg}"; }
}

run_streaming() {  # seed name config: stages 6-7 chunk by chunk (ESPnet's asr_inference_streaming)
    local s=$1 name=$2 cfg=$3
    local exp=${expdir}/seed${s}/asr_${name}
    ./run.sh "${common[@]}" --stage 6 --stop_stage 7 --expdir "${expdir}/seed${s}" \
        --asr_config "${cfg}" --asr_tag "${name}" --use_streaming true --batch_size 1 \
        --inference_tag "${inference_tag}_streaming" --inference_args "${inference_args}" \
        "${_run_opts[@]+"${_run_opts[@]}"}" && touch "${exp}/quality.streaming.done"
}

keep_run() {  # exp dest: copy the report's inputs of a finished run (no checkpoints)
    local exp=$1 dest=$2 f
    mkdir -p "${dest}"
    (cd "${exp}" && find . \( -name 'train.log*' -o -name config.yaml -o -name RESULTS.md -o -name params.json \
        -o -name 'quality*.done' -o -path './*/*/score_wer/summary.json' -o -path './*/*/score_cer/summary.json' \
        -o -path './routing_analysis/summary.json' -o -path './routing_analysis/summary.md' \) -type f -print0) |
        while IFS= read -r -d '' f; do
            mkdir -p "${dest}/$(dirname "${f}")"
            cp -p "${exp}/${f}" "${dest}/${f}"
        done
}
kept=${out}/${report_name}_runs

if [ "${stage}" -le 2 ] && [ "${stop_stage}" -ge 2 ]; then
    log "Step 2: train, decode, score, pack and analyse each model"
    pids=()
    tasks=()
    for s in ${seeds}; do
        mkdir -p "${expdir}/seed${s}"
        for i in "${!names[@]}"; do
            name=${names[$i]}
            logf=${expdir}/seed${s}/quality.${name}.log
            exp=${expdir}/seed${s}/asr_${name}
            if [ ! -f "${exp}/quality.done" ] && [ -f "${kept}/seed${s}/asr_${name}/quality.done" ]; then
                log "seed ${s}, ${name}: restored from ${kept}/seed${s}/asr_${name}"
                rm -rf "${exp}"
                mkdir -p "${exp}"
                cp -rp "${kept}/seed${s}/asr_${name}/." "${exp}/"
            fi
            if [ -f "${exp}/quality.done" ]; then
                log "seed ${s}, ${name}: finished earlier (${exp}/quality.done), kept; delete that file to run it again"
                [ -f "${exp}/params.json" ] || "${python}" "${here}/quality_report.py" --count_params "${exp}"
                if ${streaming_decode} && [ ! -f "${exp}/quality.streaming.done" ]; then
                    log "seed ${s}, ${name}: streaming decoding -> ${exp}/${inference_tag}_streaming"
                    set +e
                    run_streaming "${s}" "${name}" "${cfgs[$i]}" 2>&1 | tee -a "${logf}"
                    rc=${PIPESTATUS[0]}
                    set -e
                    if [ "${rc}" -ne 0 ]; then
                        err "seed ${s}, ${name}: streaming decoding failed (status ${rc}); log: ${workdir}/${logf}" \
                            "(a run restored from ${kept} has no checkpoint: train it again to decode it)"
                        exit 1
                    fi
                fi
                keep_run "${exp}" "${kept}/seed${s}/asr_${name}"
                continue
            fi
            [ -s "${expdir}/asr_stats/train/speech_shape" ] || {
                err "${workdir}/${expdir}/asr_stats is missing: run step 1 first (--stage 1)"
                exit 1
            }
            if [ "${jobs}" -eq 1 ]; then
                log "seed ${s}, ${name} (${cfgs[$i]}) -> ${expdir}/seed${s}/asr_${name} (log: ${logf})"
                _t0=${SECONDS}
                set +e
                run_model "${s}" "${name}" "${cfgs[$i]}" 2>&1 | tee "${logf}"
                rc=${PIPESTATUS[0]}
                set -e
                if [ "${rc}" -ne 0 ]; then
                    err "seed ${s}, ${name} failed (status ${rc}); log: ${workdir}/${logf}"
                    exit 1
                fi
                log "seed ${s}, ${name} done in $((SECONDS - _t0)) s"
                keep_run "${exp}" "${kept}/seed${s}/asr_${name}"
            else
                while [ "$(jobs -rp | wc -l)" -ge "${jobs}" ]; do sleep 1; done
                log "seed ${s}, ${name} (${cfgs[$i]}) started in the background (log: ${logf})"
                run_model "${s}" "${name}" "${cfgs[$i]}" >"${logf}" 2>&1 &
                pids+=($!)
                tasks+=("${s}:${name}")
            fi
        done
    done
    failed=0
    for i in "${!pids[@]}"; do
        if ! wait "${pids[$i]}"; then
            s=${tasks[$i]%%:*}
            name=${tasks[$i]#*:}
            logf=${expdir}/seed${s}/quality.${name}.log
            err "seed ${s}, ${name} failed; log: ${workdir}/${logf}"
            echo "---- last lines of ${logf} ----" >&2
            tail -n 30 "${logf}" >&2
            echo "----" >&2
            failed=1
        else
            s=${tasks[$i]%%:*}
            name=${tasks[$i]#*:}
            keep_run "${expdir}/seed${s}/asr_${name}" "${kept}/seed${s}/asr_${name}"
        fi
    done
    [ "${failed}" -eq 0 ] || exit 1
fi

# ---------------------------------------------------------------------------------------------
if [ "${stage}" -le 3 ] && [ "${stop_stage}" -ge 3 ]; then
    log "Step 3: report -> ${out}/${report_name}.md"
    _streaming_report=()
    ${streaming_decode} && _streaming_report=(--streaming_tag "${inference_tag}_streaming")
    # shellcheck disable=SC2086
    # (parameter counts: built from each config.yaml here, where its relative paths hold)
    "${python}" "${here}/quality_report.py" --root "${workdir}/${expdir}" --models "${names[@]}" --seeds ${seeds} \
        --decode_tag "${inference_tag}" --ood_sets ${ood_sets} --dump dump/raw --train_set train \
        --command "${command_line}" --out "${out}" --name "${report_name}" \
        "${_streaming_report[@]+"${_streaming_report[@]}"}" \
        "${_report_args[@]+"${_report_args[@]}"}"
    log "report: ${out}/${report_name}.md"
fi
log "finished [elapsed=${SECONDS}s]"
