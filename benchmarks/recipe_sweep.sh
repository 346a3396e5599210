#!/usr/bin/env bash
# Batch size / learning rate sweep for per-hook decoders on one group of sites: every
# configuration trains for the same wall-clock time, in parallel, spread round-robin over
# the GPUs; prints the faithfulness curve (per evaluation: step, inputs seen, rate per site).
#
#   bash benchmarks/recipe_sweep.sh ../shared/models/paper_counting runs/sweep 330 4096:2e-3 512:1e-3 1024:3e-3
#
# Arguments: probed-model folder, output folder, seconds per configuration, then
# BATCH:LR pairs. Environment: TLI (default "tl-inversion"), TASK (counting), SITES
# (default: the four counting sites of layer 1 that learn slowest), EVAL_EVERY (500).
set -euo pipefail
model=$1 out=$2 seconds=$3
shift 3
TLI=${TLI:-tl-inversion}
TASK=${TASK:-counting}
read -r -a sites <<<"${SITES:-blocks.1.attn.hook_result[0] blocks.1.hook_resid_mid blocks.1.hook_mlp_out blocks.1.hook_resid_post}"
ngpu=$(nvidia-smi -L 2>/dev/null | wc -l || true)
ngpu=$(( ${ngpu:-0} > 0 ? ngpu : 1 ))
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-4}
mkdir -p "$out"
i=0
pids=()
for conf in "$@"; do
    bs=${conf%%:*} lr=${conf##*:}
    CUDA_VISIBLE_DEVICES=$((i % ngpu)) $TLI train --model "$model" --task "$TASK" --sites "${sites[@]}" \
        --steps 1000000 --batch-size "$bs" --lr "$lr" --warmup-steps 200 --schedule cosine \
        --time-limit "$seconds" --eval-every "${EVAL_EVERY:-500}" --checkpoint-every 0 \
        --out "$out/bs${bs}_lr${lr}" >"$out/bs${bs}_lr${lr}.log" 2>&1 &
    pids+=($!)
    i=$((i + 1))
done
for p in "${pids[@]}"; do wait "$p"; done
for conf in "$@"; do
    bs=${conf%%:*} lr=${conf##*:}
    echo "== batch $bs, lr $lr: $(grep -h 'inputs/s' "$out/bs${bs}_lr${lr}.log")"
    python3 - "$out/bs${bs}_lr${lr}/log.jsonl" "$bs" <<'EOF'
import json, sys
bs = int(sys.argv[2])
for line in open(sys.argv[1]):
    r = json.loads(line)
    if "faithfulness" in r:
        rates = " ".join(f"{v:.2f}" for k, v in r.items() if k.startswith("faithfulness/"))
        print(f"step {r['step']:6d}  inputs {r['step'] * bs / 1e6:6.2f}M  loss {r['loss']:.3f}  mean {r['faithfulness']:.3f}  [{rates}]")
EOF
done
