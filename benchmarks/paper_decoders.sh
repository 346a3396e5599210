#!/usr/bin/env bash
# Per-hook decoders for a task's paper sites, trained in one process (SPLIT=0) or as two
# groups in parallel (SPLIT=1, the default: one process per GPU; both share the GPU when
# there is one), then merged and evaluated: the commands behind the README's counting and
# addition numbers.
#
#   bash benchmarks/paper_decoders.sh counting ../shared/models/paper_counting runs/counting 470
#   bash benchmarks/paper_decoders.sh addition runs/addition_probed runs/addition 400
#
# Arguments: task, probed-model folder, output folder, training seconds per group (counted
# over all calls: the same command again after an interruption resumes each group).
# Environment: TLI (the CLI, default "tl-inversion"), SPLIT (1), BATCH (1024), LR (2e-3),
# GPU_A / GPU_B (CUDA devices of the two groups; default 0 and 1, or 0 and 0 on one GPU),
# EVAL_GPU (default GPU_A), EVAL_ARGS (extra arguments of `tl-inversion evaluate`),
# TRAIN_ARGS (extra arguments of `tl-inversion train`, e.g. --no-stack; a group that fails
# with --compile resumes without it),
# OMP_NUM_THREADS (CPU threads per process; default: a quarter of the cores),
# SITES_A / SITES_B (space-separated sites replacing the task's two groups; SITES_B may be
# empty), EXTRA_BANKS (space-separated bank folders of other sites, e.g. from
# `tl-inversion select-sites`, merged into the evaluated bank).
# Writes <out>/group_a, <out>/group_b (training runs with bank/ and log.jsonl),
# <out>/*.log and the report <out>/report/report.md.
set -euo pipefail
if [ $# -ne 4 ] || [ "$1" = -h ] || [ "$1" = --help ]; then
    sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0" >&2
    [ $# -eq 4 ] || echo "paper_decoders.sh: expected 4 arguments (task, model folder, output folder, seconds), got $#" >&2
    exit 2
fi
task=$1 model=$2 out=$3 seconds=$4
if ! [[ $seconds =~ ^[0-9]+([.][0-9]+)?$ ]] || [ "$(awk "BEGIN{print ($seconds > 0)}")" != 1 ]; then
    echo "paper_decoders.sh: seconds must be a positive number (training seconds per group), got '$seconds'" >&2
    exit 2
fi
TLI=${TLI:-tl-inversion}
BATCH=${BATCH:-1024}
LR=${LR:-2e-3}
SPLIT=${SPLIT:-1}
fail() { echo "paper_decoders.sh: $*" >&2; exit 2; }
[ -f "$model/config.json" ] || fail "no model folder with a config.json at '$model'"
[[ $SPLIT =~ ^[01]$ ]] || fail "SPLIT must be 0 (one process) or 1 (two groups), got '$SPLIT'"
[[ $BATCH =~ ^[1-9][0-9]*$ ]] || fail "BATCH must be a positive integer, got '$BATCH'"
[[ $LR =~ ^[0-9]*[.]?[0-9]+([eE][-+]?[0-9]+)?$ ]] && [ "$(awk "BEGIN{print ($LR > 0)}")" = 1 ] \
    || fail "LR must be a positive number, got '$LR'"
case $task in
counting)
    # the three sites that learned slowest (README) get a GPU of their own
    group_a=("blocks.1.attn.hook_result[0]" blocks.1.hook_mlp_out blocks.1.hook_resid_post)
    group_b=(blocks.0.hook_resid_pre "blocks.0.attn.hook_result[0]" blocks.0.hook_resid_mid blocks.0.hook_mlp_out
             blocks.0.hook_resid_post blocks.1.hook_resid_mid)
    ;;
addition)
    group_a=(blocks.0.hook_resid_pre "blocks.0.attn.hook_result[0]" "blocks.0.attn.hook_result[1]"
             "blocks.0.attn.hook_result[2]" "blocks.0.attn.hook_result[3]" blocks.0.hook_resid_mid blocks.0.hook_resid_post)
    group_b=("blocks.1.attn.hook_result[0]" "blocks.1.attn.hook_result[1]" "blocks.1.attn.hook_result[2]"
             "blocks.1.attn.hook_result[3]" blocks.1.hook_resid_mid blocks.1.hook_resid_post)
    ;;
*)
    echo "task must be counting or addition, got $task" >&2
    exit 2
    ;;
esac
if [ -n "${SITES_A:-}" ]; then
    read -r -a group_a <<<"$SITES_A"
    read -r -a group_b <<<"${SITES_B:-}"
fi
if [ "$SPLIT" = 0 ]; then
    group_a+=("${group_b[@]}")
    group_b=()
fi
mkdir -p "$out"
ngpu=$(nvidia-smi -L 2>/dev/null | wc -l || true)
GPU_A=${GPU_A:-0}
GPU_B=${GPU_B:-$([ "${ngpu:-0}" -ge 2 ] && echo 1 || echo 0)}
EVAL_GPU=${EVAL_GPU:-$GPU_A}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(( ($(nproc) + 3) / 4 ))}

train_group() {  # name, CUDA device, sites...
    local name=$1 dev=$2
    shift 2
    local args=(--model "$model" --task "$task" --sites "$@" --steps 1000000 --batch-size "$BATCH" --lr "$LR"
                --warmup-steps 200 --schedule cosine --time-limit "$seconds" --eval-every 1000
                --checkpoint-every 1000 --save-dtype float16 --out "$out/$name")
    # shellcheck disable=SC2086
    CUDA_VISIBLE_DEVICES=$dev $TLI train "${args[@]}" ${TRAIN_ARGS:-} >"$out/$name.log" 2>&1 && return 0
    # a run that fails with --compile continues eagerly from its last checkpoint (same time budget)
    [[ " ${TRAIN_ARGS:-} " == *" --compile "* ]] || return 1
    echo "paper_decoders.sh: $name failed with --compile; resuming without it" | tee -a "$out/$name.log" >&2
    # shellcheck disable=SC2086
    CUDA_VISIBLE_DEVICES=$dev $TLI train "${args[@]}" ${TRAIN_ARGS//--compile/} >>"$out/$name.log" 2>&1
}

start=$(date +%s)
train_group group_a "$GPU_A" "${group_a[@]}" &
pid_a=$!
banks=("$out/group_a/bank")
read -r -a extra_banks <<<"${EXTRA_BANKS:-}"
status=0
if [ ${#group_b[@]} -gt 0 ]; then
    train_group group_b "$GPU_B" "${group_b[@]}" &
    pid_b=$!
    banks+=("$out/group_b/bank")
    wait $pid_b || status=$?
fi
wait $pid_a || status=$?
echo "training: $(($(date +%s) - start)) s on ${ngpu:-0} GPU(s); exit $status"
tail -n 3 "$out"/group_*.log
[ "$status" -eq 0 ] || exit "$status"
# shellcheck disable=SC2086
CUDA_VISIBLE_DEVICES=$EVAL_GPU $TLI evaluate --model "$model" --task "$task" --bank "${banks[@]}" "${extra_banks[@]}" \
    --out "$out/report" ${EVAL_ARGS:-}
echo "evaluation: $(($(date +%s) - start)) s since the start"
