#!/usr/bin/env bash
# One node, every GPU, without a Hydra launcher: torchrun starts one process per GPU and Lightning reads their ranks
# from its environment (it starts no processes itself).
#
#   scripts/torchrun.sh [OVERRIDE ...]      e.g. scripts/torchrun.sh model=gpt2-124m data.seq_len=1024
#
# NPROC (default: every GPU) processes; RUN_DIR (default: outputs/torchrun-DATE-TIME) is passed to every process,
# so all of them write one run (with Hydra's default ${now:…} directory, each process could name its own).
# Run it again with the same RUN_DIR to continue the run (resume=auto).
set -euo pipefail

nproc=${NPROC:-$(python -c "import torch; print(torch.cuda.device_count())")}
run_dir=${RUN_DIR:-outputs/torchrun-$(date +%Y%m%d-%H%M%S)}
if [[ $nproc -lt 1 ]]; then
    echo "error: no CUDA GPU found: set NPROC, or run python -m lmpre.train trainer=cpu" >&2
    exit 1
fi

exec torchrun --standalone --nproc_per_node="$nproc" -m lmpre.train \
    trainer=ddp trainer.devices="$nproc" hydra.run.dir="$run_dir" "$@"
