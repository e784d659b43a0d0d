#!/bin/bash
# Issue 18's measurements on one GPU, in priority order, within a time budget:
#   OUT=/tmp/gpu BUDGET_S=560 bash experiments/gpu_check.sh
# Needs no TensorFlow; ml_collections, tensorboardX and grain may come as wheels
# (PYTHONPATH). Each part's JSON is merged into $OUT/gpu_check.json as soon as it ends, and a part
# is skipped when less time is left than it needs, so a cut run keeps what it did.
# Results: $OUT/gpu_check.json (all parts); docs/performance.md ("GPU path"), docs/gpu_check_<device>.json.
set -u
OUT=${OUT:-/tmp/gpu_check}
BUDGET_S=${BUDGET_S:-560}
PY=${PY:-python3}
PARTS=/tmp/gpu_check_parts
mkdir -p "$OUT" "$PARTS"
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2
export JAX_COMPILATION_CACHE_DIR=${JAX_COMPILATION_CACHE_DIR:-/tmp/vaegan_jax_cache}
export VAEGAN_CACHE_DIR=${VAEGAN_CACHE_DIR:-/tmp/vaegan_eval_cache}
T0=$(date +%s)

part() {  # part NAME NEEDS_S TIMEOUT_S command...
  local name=$1 needs=$2 limit=$3
  shift 3
  local left=$((BUDGET_S - ($(date +%s) - T0)))
  if [ "$left" -lt "$needs" ]; then
    echo "== skip $name: ${left}s left, needs ${needs}s"
    return
  fi
  [ "$limit" -gt "$left" ] && limit=$left
  echo "== $(date +%T) $name (limit ${limit}s)"
  local t=$(date +%s)
  timeout "$limit" "$@"
  echo "== $name: exit $? after $(($(date +%s) - t))s"
  merge
}

merge() {  # every part's JSON so far, in one file: $OUT/gpu_check.json
  $PY - "$PARTS" "$OUT/gpu_check.json" <<'PYEOF'
import glob, json, os, sys
parts = {}
for f in sorted(glob.glob(os.path.join(sys.argv[1], "*.json*"))):
  name = os.path.basename(f).split(".")[0]
  try:
    parts[name] = ([json.loads(l) for l in open(f)] if f.endswith(".jsonl")
                   else json.load(open(f)))
  except ValueError as e:
    parts[name] = {"error": str(e)}
json.dump(parts, open(sys.argv[2], "w"), indent=1)
PYEOF
}

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
$PY -c "import jax, flax, torch; print('jax', jax.__version__, 'flax', flax.__version__, 'torch', torch.__version__, jax.devices())"

# 1. The paper's 64x64 step in bf16 at batch 256, ours and PyTorch's in one run.
part bench_paper64 150 200 $PY -m experiments.benchmark --rows=paper64_vaegan --dtype=bfloat16 \
  --batch_size=256 --steps=20 --naive=False --input_pipeline=False --json_out="$PARTS/bench_paper64_bf16.json"
# 2. The loop's rate against the step's: digits (host-bound), 1 and 10 steps per dispatch.
part loop_digits 60 120 $PY -m experiments.loop_rate --rows=default32_vaegan --steps=2000 \
  --steps_per_dispatch=1,10 --json_out="$PARTS/loop_digits.json"
# 3. Where the time goes: a profile of the 64x64 bf16 step at batch 256.
part profile 40 120 $PY -m experiments.profile_step --row=paper64_vaegan --dtype=bfloat16 \
  --batch_size=256 --steps=10 --json_out="$PARTS/profile_paper64_bf16.json"
# 4. The 64x64 loop on CelebA-format JPEGs decoded by worker processes: is the input the wait?
part loop_paper64 60 150 $PY -m experiments.loop_rate --rows=paper64_vaegan --dtype=bfloat16 \
  --batch_size=256 --worker_processes=12 --fake_images=2048 --steps=400 --steps_per_dispatch=1 \
  --json_out="$PARTS/loop_paper64_bf16.json"
# 5. The digits step and the 64x64 float32 step against PyTorch.
part bench_small 60 120 $PY -m experiments.benchmark --rows=default32_vaegan,paper64_vaegan \
  --dtype=float32 --batch_size=64 --steps=20 --naive=False --input_pipeline=False \
  --json_out="$PARTS/bench_f32_64.json"
# 6. The default run in bf16 against float32, same steps, evaluated (10 steps per dispatch).
for dt in float32 bfloat16; do
  part "default_$dt" 60 120 $PY -m experiments.train --workdir="/tmp/run_$dt" \
    --config.model.dtype=$dt --config.steps_per_dispatch=10 --config.log_every=250
  cp "/tmp/run_$dt/eval/step_2000.json" "$PARTS/eval_default_$dt.json" 2>/dev/null ||
    cp "$(ls -t /tmp/run_$dt/eval/*.json 2>/dev/null | head -1)" "$PARTS/eval_default_$dt.json" 2>/dev/null
  cp "/tmp/run_$dt/metrics.jsonl" "$PARTS/metrics_default_$dt.jsonl" 2>/dev/null
done
merge
# 7. Attempts the profile points at: batch per device, then XLA flags.
part attempt_b512 50 100 $PY -m experiments.profile_step --row=paper64_vaegan --dtype=bfloat16 \
  --batch_size=512 --steps=5 --json_out="$PARTS/attempt_b512.json"
echo "== done after $(($(date +%s) - T0))s"
