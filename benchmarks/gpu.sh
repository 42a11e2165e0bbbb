#!/usr/bin/env bash
# Every GPU benchmark in one command (about 8 minutes on a bare H100 machine, no network):
#
#   bash benchmarks/gpu.sh OUTDIR
#
# Needs, in the repository root (both git-ignored, so a caller must bring them along):
#   wheels/                    filled by `bash benchmarks/fetch_wheels.sh` (ml_collections, dm-pix)
#   data/cifar10-jpeg.tar.gz   a copy of ../shared/data/cifar10-jpeg.tar.gz
#                              (mkdir -p data && cp ../shared/data/cifar10-jpeg.tar.gz data/)
# With the device tool: carry ["wheels", "data"], command `bash benchmarks/gpu.sh $OUT`.
# Writes into OUTDIR (7 files, no deeper than OUTDIR/quality/): env.txt, throughput_peer.json,
# throughput_other.json, throughput.log (both tables), quality.log, quality/results.{json,md}.
# Each phase has a time limit in seconds (PHASE_PEER 130, PHASE_THROUGHPUT 100, PHASE_QUALITY 220;
# with setup about 8 minutes); a phase cut short keeps what it wrote (JSON after each dtype, quality
# after each protocol and seed). DRY_RUN=1 prints the commands without running them.
set -uo pipefail
OUTDIR=${1:?usage: bash benchmarks/gpu.sh OUTDIR}
cd "$(dirname "$0")/.."
mkdir -p "$OUTDIR"
OUTDIR=$(cd "$OUTDIR" && pwd)
PY=${PYTHON:-python3}
ARCHIVE=${CIFAR_ARCHIVE:-data/cifar10-jpeg.tar.gz}
BENCH_PRESET=${BENCH_PRESET:-gpu}      # tiny: a CPU rehearsal of this script
QUALITY_BUDGET=${QUALITY_BUDGET:-gpu}  # tiny: likewise
PHASE_PEER=${PHASE_PEER:-130}
PHASE_THROUGHPUT=${PHASE_THROUGHPUT:-100}
PHASE_QUALITY=${PHASE_QUALITY:-220}
export PYTHONUNBUFFERED=1 SEMSAD_CACHE=${SEMSAD_CACHE:-/tmp/semsad_cache}
export JAX_COMPILATION_CACHE_DIR=${JAX_COMPILATION_CACHE_DIR:-/tmp/semsad_jax_cache}
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.6}  # torch shares the GPU
run() { echo "+ $*"; [ "${DRY_RUN:-0}" = 1 ] || "$@"; }

if ls wheels/*.whl >/dev/null 2>&1; then
  run "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/semsad_site wheels/*.whl || exit 1
  export PYTHONPATH=/tmp/semsad_site${PYTHONPATH:+:$PYTHONPATH}
fi
{
  date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1
  "$PY" -c "import jax, flax, optax, ml_collections, dm_pix, sklearn; print('jax', jax.__version__, jax.devices())" 2>&1
  "$PY" -c "import torch; print('torch', torch.__version__, torch.cuda.is_available())" 2>&1
  nproc; uptime
} | tee "$OUTDIR/env.txt"
[ -f "$ARCHIVE" ] || echo "warning: $ARCHIVE missing: the quality phase will fail" | tee -a "$OUTDIR/env.txt"

# 1. Throughput. (a) the encoder step, ours in bf16 + f32 against the PyTorch peer (torchvision
# when importable); (b) the other hot paths, the discriminator step and the feature bank against
# their PyTorch peers. Two runs so that each fits its own time limit.
run timeout "$PHASE_PEER" "$PY" -m benchmarks throughput --preset="$BENCH_PRESET" \
  --dtypes=bfloat16,float32 --benches=encoder,encoder_noaug --torch \
  --torch-benches=dataloader,device_aug,step,augment \
  --torch-dtypes=float32,bfloat16 --out="$OUTDIR/throughput_peer.json" \
  2>&1 | tee "$OUTDIR/throughput.log"
run timeout "$PHASE_THROUGHPUT" "$PY" -m benchmarks throughput --preset="$BENCH_PRESET" \
  --dtypes=bfloat16,float32 --benches=discriminator,augment,bank,knn \
  --torch --torch-benches=disc,bank --torch-dtypes=float32,bfloat16 --out="$OUTDIR/throughput_other.json" 2>&1 | tee -a "$OUTDIR/throughput.log"

# 2. Quality, GPU budget (workdirs outside OUTDIR: checkpoints are large and deep).
run timeout "$PHASE_QUALITY" "$PY" -m benchmarks cifar10_quality --budget="$QUALITY_BUDGET" \
  --archive="$ARCHIVE" --out="$OUTDIR/quality" --work=/tmp/semsad_quality_work \
  2>&1 | tee "$OUTDIR/quality.log"
echo "done: $(ls "$OUTDIR" "$OUTDIR/quality" 2>/dev/null | tr '\n' ' ')"
