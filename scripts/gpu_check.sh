#!/usr/bin/env bash
# GPU readiness: a short run of GPT-2 small (model=gpt2-124m) with trainer=gpu, then trainer=fsdp, each printing
# its tokens/s and MFU as Lightning's ThroughputMonitor logged them (train/device/*, read back from its metrics.csv).
#
#   scripts/gpu_check.sh [OVERRIDE ...]        e.g. scripts/gpu_check.sh data.batch_size=32
#
# STEPS (default 100) training steps per run; OUT (default gpu_check/DATE-TIME) holds both runs. Without a CUDA GPU
# it stops at once; LMPRE_GPU_CHECK_ANY_DEVICE=1 skips that check, to try the script itself on CPU with overrides
# such as trainer.accelerator=cpu trainer.precision=32-true (MFU is then not logged: no peak FLOP/s is known).
set -euo pipefail

steps=${STEPS:-100}
out=${OUT:-gpu_check/$(date +%Y%m%d-%H%M%S)}
python=${PYTHON:-python}

if [[ -z ${LMPRE_GPU_CHECK_ANY_DEVICE:-} ]] && ! "$python" -c "import sys, torch; sys.exit(not torch.cuda.is_available())"; then
    echo "error: gpu_check needs a CUDA GPU and torch finds none (torch.cuda.is_available() is False)" >&2
    exit 1
fi

for preset in gpu fsdp; do
    # 50 steps of throughput window, no validation but the last step's, no checkpoints but last.ckpt.
    "$python" -m lmpre.train trainer="$preset" model=gpt2-124m data=wiki data.seq_len=1024 \
        trainer.max_steps="$steps" trainer.val_check_interval="$steps" trainer.limit_val_batches=4 \
        validate_first=false callbacks.throughput.window_size=$((steps / 2)) callbacks.progress=null \
        "logger=[tensorboard,csv]" trainer.log_every_n_steps=10 hydra.run.dir="$out/$preset" "$@"
done

"$python" - "$out" <<'PY'
import csv, sys
from pathlib import Path

print(f"\n{'trainer':8} {'tokens/s':>12} {'MFU':>7}   (mean of the logged windows, {sys.argv[1]})")
for preset in ("gpu", "fsdp"):
    rows = list(csv.DictReader((Path(sys.argv[1]) / preset / "csv" / "metrics.csv").open()))
    def mean(key):
        values = [float(r[key]) for r in rows if r.get(key)]
        return sum(values) / len(values) if values else float("nan")
    tokens, mfu = mean("train/device/items_per_sec"), mean("train/device/mfu")
    print(f"{preset:8} {tokens:12,.0f} {'n/a' if mfu != mfu else f'{mfu:.1%}':>7}")  # n/a: no peak FLOP/s known
PY
