#!/usr/bin/env bash
# The GPU acceptance check in one call, for a machine lent with one GPU and the project
# installed: the checks and speed measurements of `python scripts/benchmark.py acceptance`,
# published in docs/benchmarks.jsonl and docs/benchmarks.md (--record). The command
# targets under 8 minutes; the time limit stops it at 9 so that a 10-minute session still
# gets its output back. Exit status: the benchmark's (1: a check failed), 124 if stopped.
#
#     bash scripts/gpu_acceptance.sh [more options of `benchmark.py acceptance`]
set -euo pipefail
cd "$(dirname "$0")/.."

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python -c "import torch; assert torch.cuda.is_available(), 'no CUDA device visible to torch'; \
print('torch', torch.__version__, 'CUDA', torch.version.cuda, 'cuDNN', torch.backends.cudnn.version())"
timeout --signal=TERM --kill-after=20 540 python scripts/benchmark.py acceptance --record "$@"
