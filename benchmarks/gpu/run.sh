#!/usr/bin/env bash
# The GPU checks of one call (under 5 minutes on one H100 / H200), every result under $OUT:
#   1. the training-step benchmark at base size (width 768, 12 layers, 12 heads, 196 patches,
#      40 tokens, BERT's 30,522 vocabulary), bf16 autocast, MFU against --peak-tflops
#      ($PEAK_TFLOPS, default 989: H100 / H200 dense bf16), batch 64 (every pool) and 256 (vilt);
#   2. the main job in bf16: accelerate launch --mixed_precision bf16 recipes/flava_like.py
#      train.mixed_precision=bf16 (the recipe's default 700 steps on the synthetic world);
#   3. FSDP2 on one GPU (recipes/accelerate/fsdp2.yaml, vilt_like debug config): stopped halfway,
#      resumed from the sharded checkpoint, final model loaded with AutoModel.
# $OUT/summary.json: each step's exit status, seconds and files; logs in $OUT/*.log.
#
# Usage, from the repository root:
#   OUT=/some/folder bash benchmarks/gpu/run.sh            # on the GPU machine
#   OUT=/tmp/gpu bash benchmarks/gpu/run.sh --cpu --quick  # the same steps, tiny, on CPU
#
# Dependencies. The GPU machine's Python 3.12 has torch, transformers, accelerate, timm,
# tokenizers, safetensors, huggingface_hub, pyarrow, but not `datasets` / `omegaconf` and
# datasets' own dill, multiprocess, xxhash (omegaconf 2.4 needs only PyYAML, no antlr4). Their
# wheels come from .whl/, downloaded beforehand on any machine with network:
#
#   pip download --no-deps --only-binary=:all: --python-version 3.12 \
#       --platform manylinux2014_x86_64 -d .whl datasets omegaconf dill multiprocess xxhash
#
# (checked with `unzip -p .whl/X.whl '*/METADATA' | grep ^Requires-Dist`: datasets 5.2 also needs
# pandas, fsspec, pyyaml, filelock, numpy, pyarrow>=24, tqdm, huggingface-hub, packaging: all
# but pandas come with transformers / huggingface_hub / pyarrow; if `import datasets` fails on
# pandas, the preflight says so: add `pandas python-dateutil` to the download.)
# .whl/ and .site/ are git-ignored: give `.whl` to the device tool's `carry`. This script
# installs into .site/ only the wheels whose distribution the machine lacks
# (pip install --no-index --no-deps --target .site), then onetower itself the same way (built
# from this checkout when setuptools is there, else from a onetower-*.whl in .whl/), and sets
# PYTHONPATH=$PWD/.site. A module still missing after that is named by the preflight step.
set -u
cd "$(dirname "$0")/../.."
OUT=${OUT:-runs/gpu}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
PY=${PYTHON:-python3}
PEAK=${PEAK_TFLOPS:-989}
CPU=0
QUICK=0
for a in "$@"; do
  case $a in
    --cpu) CPU=1 ;;
    --quick) QUICK=1 ;;
    *) echo "unknown argument $a (use --cpu, --quick)" >&2; exit 2 ;;
  esac
done

STEPS=()
step() {  # step NAME COMMAND...: run it, log it, time it, record its exit status
  local name=$1
  shift
  local t0=$SECONDS
  echo "== $name: $*" | tee "$OUT/$name.log"
  "$@" >>"$OUT/$name.log" 2>&1
  local rc=$?
  echo "== $name: exit $rc after $((SECONDS - t0)) s" | tee -a "$OUT/$name.log"
  STEPS+=("{\"step\": \"$name\", \"rc\": $rc, \"seconds\": $((SECONDS - t0))}")
  return $rc
}

install_deps() {
  mkdir -p .site
  export PYTHONPATH=$PWD/.site${PYTHONPATH:+:$PYTHONPATH}
  local missing=()
  for w in .whl/*.whl; do
    [ -e "$w" ] || continue
    local dist
    dist=$(basename "$w" | cut -d- -f1)
    [ "$dist" = onetower ] && continue
    if ! "$PY" -c "import importlib.metadata as m, sys; m.version(sys.argv[1])" "$dist" \
      2>/dev/null; then
      missing+=("$w")
    fi
  done
  if [ ${#missing[@]} -gt 0 ]; then
    "$PY" -m pip install -q --no-index --no-deps --target .site "${missing[@]}" || return 1
  fi
  if "$PY" -c "import setuptools, wheel" 2>/dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-build-isolation --upgrade --target .site . \
      || return 1
  else
    local own
    own=$(ls .whl/onetower-*.whl 2>/dev/null | tail -1)
    if [ -z "$own" ]; then
      echo "no setuptools to build onetower and no .whl/onetower-*.whl (make one with" \
        "'pip wheel --no-deps -w .whl .')" >&2
      return 1
    fi
    "$PY" -m pip install -q --no-index --no-deps --upgrade --target .site "$own" || return 1
  fi
  "$PY" - <<'EOF'
import importlib, sys
need = ["torch", "transformers", "accelerate", "timm", "tokenizers", "safetensors", "datasets",
        "omegaconf", "einops", "PIL", "huggingface_hub", "onetower.pretraining"]
missing = []
for name in need:
    try:
        importlib.import_module(name)
    except Exception as e:  # noqa: BLE001
        missing.append(f"{name} ({type(e).__name__}: {e})")
if missing:
    sys.exit("missing: " + "; ".join(missing) + ": add their wheels to .whl/")
import torch, transformers, accelerate
print("torch", torch.__version__, "transformers", transformers.__version__, "accelerate",
      accelerate.__version__, "cuda", torch.cuda.is_available())
EOF
}

LAUNCH=("$PY" -m accelerate.commands.launch --num_machines 1 --dynamo_backend no)
if [ $CPU = 1 ]; then
  DEVICE=cpu
  # no --cpu: accelerate 1.15 would run the FSDP config as plain DDP (run.cpu=true instead)
  RUN=(run.cpu=true)
else
  DEVICE=cuda
  RUN=()
fi
# time limits per step (seconds on the GPU, 5 minutes in all; a CPU takes far longer)
TS=$([ $CPU = 1 ] && echo 20 || echo 1)
WORLD=$PWD/runs/gpu_world  # synthetic data outside $OUT (it does not need to come back)

summary() {
  {
    echo "{\"device\": \"$DEVICE\", \"quick\": $([ $QUICK = 1 ] && echo true || echo false),"
    echo " \"peak_tflops\": $PEAK, \"steps\": ["
    (IFS=,; echo "  ${STEPS[*]}")
    echo "]}"
  } >"$OUT/summary.json"
  cat "$OUT/summary.json"
}
if ! step preflight install_deps; then
  echo "preflight failed: see $OUT/preflight.log" >&2
  summary
  exit 1
fi
export HF_HUB_OFFLINE=1

# 1. the step benchmark at base size
if [ $QUICK = 1 ]; then
  BENCH=(--quick --no-memory)
  BIG=(--quick --no-memory --pools vilt)
else
  BASE=(--width 768 --depth 12 --heads 12 --patches 196 --text-len 40 --vocab 30522)
  BENCH=("${BASE[@]}" --batch 64 --warmup 2 --rounds 5)
  BIG=("${BASE[@]}" --batch 256 --warmup 2 --rounds 3 --pools vilt --no-ablations)
fi
step bench_b64 timeout $((100 * TS)) "$PY" benchmarks/train_step.py --device $DEVICE --peak-tflops "$PEAK" \
  "${BENCH[@]}" --json "$OUT/train_step_b64.json"
step bench_b256 timeout $((50 * TS)) "$PY" benchmarks/train_step.py --device $DEVICE --peak-tflops "$PEAK" \
  "${BIG[@]}" --json "$OUT/train_step_b256.json"

# 2. the main job in bf16
if [ $QUICK = 1 ]; then
  MAIN=(--config recipes/configs/debug/flava_like.yaml train.max_steps=6)
else
  MAIN=()
fi
step flava_bf16 timeout $((90 * TS)) "${LAUNCH[@]}" --num_processes 1 --mixed_precision bf16 \
  recipes/flava_like.py "${MAIN[@]}" train.mixed_precision=bf16 "${RUN[@]}" \
  run.output_dir="$OUT/flava_like_bf16" data.synthetic.root="$WORLD/flava" run.overwrite=true

# 3. FSDP2 on one device: stop halfway, resume from the sharded checkpoint, load the final model
FSDP=("${LAUNCH[@]}" --config_file recipes/accelerate/fsdp2.yaml --num_processes 1
  recipes/vilt_like.py --config recipes/configs/debug/vilt_like.yaml "${RUN[@]}"
  run.output_dir="$OUT/fsdp2_vilt_like" data.synthetic.root="$WORLD/debug")
rm -rf "$OUT/fsdp2_vilt_like"
step fsdp2_first_half timeout $((40 * TS)) "${FSDP[@]}" train.stop_at=15
step fsdp2_resume timeout $((40 * TS)) "${FSDP[@]}" run.resume=latest
step fsdp2_load timeout $((20 * TS)) "$PY" - "$OUT/fsdp2_vilt_like" "$OUT/fsdp2_load.json" <<'EOF'
import json, sys
from pathlib import Path

import onetower  # noqa: F401  (registers the Auto classes)
from transformers import AutoModel

run, dest = Path(sys.argv[1]), Path(sys.argv[2])
record = json.loads((run / "metrics.json").read_text())
model = AutoModel.from_pretrained(run / "final")
out = {
    "loaded_class": type(model).__name__,
    "parameters": sum(p.numel() for p in model.parameters()),
    "distributed_type": record.get("distributed_type"),
    "sharded_parameters": record.get("sharded_parameters"),
    "world_size": record.get("world_size"),
    "replicas_identical": record.get("replicas_identical"),
    "final_metrics": record.get("metrics"),
}
dest.write_text(json.dumps(out, indent=2))
print(json.dumps(out))
assert out["distributed_type"] == "FSDP", "FSDP did not engage"
EOF

summary
