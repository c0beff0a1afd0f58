#!/usr/bin/env bash
# The GPU check: on a fresh GPU machine (the device tool's nvidia-h200), from the repository root,
# install TVM from carried wheels, run tests/device/, and benchmark ResNet-32 (batch 64, 90%
# sparsity, every GPU scheme) against cuDNN, writing JSON. Under 8 minutes (CHECK_BUDGET_S).
#
# Once, HERE (network to PyPI):   bash benchmarks/gpu_wheels.sh
#   -> .whl/part1 (57 MiB) and .whl/part2 (49 MiB): the wheels are ~110 MB, one call carries 64 MiB.
#
# Then two `run` calls, the second RIGHT after the first returns (a warm machine keeps /tmp for
# only 30 s of idleness):
#   call 1: command "bash benchmarks/gpu_check.sh stash"   carry [".whl/part1"]   timeout_s 120
#   call 2: command "bash benchmarks/gpu_check.sh"         carry [".whl/part2"]   timeout_s 560
# Call 2 on a fresh machine (call 1's part gone) stops at once with exit status 3 and says so:
# make both calls again. What comes back from $OUT: gpu_check.log (machine, versions, install),
# device_tests.log (pytest -rs), gpu_bench.json (rewritten after each piece: a run cut short keeps
# what it measured, "complete": false) and gpu_bench.log (the table).
#
# Environment: CHECK_BUDGET_S (default 450: seconds for the whole check), BENCH_ARGS (extra
# `mest-compile bench` options, e.g. "--scheme channel --reps 10").
set -uo pipefail
cd "$(dirname "$0")/.."

OUT=${OUT:-$PWD/gpu-check-out}
STASH=${GPU_CHECK_STASH:-/tmp/mest-wheels}   # the parts, across the two calls
SITE=/tmp/mest-site      # TVM and the other carried packages (pip --target)
PY=${PYTHON:-python3}
BUDGET=${CHECK_BUDGET_S:-450}
START=$(date +%s)
mkdir -p "$OUT" "$STASH"
LOG=$OUT/gpu_check.log

say() { echo "gpu_check: $*" | tee -a "$LOG"; }
left() { echo $((BUDGET - ($(date +%s) - START))); }

# ---- the wheel parts: keep what this call carried ------------------------------------------
for part in .whl/part*/wheels.tar.*; do
  [ -f "$part" ] && cp "$part" "$STASH/"
done
say "parts in $STASH: $(cd "$STASH" && ls wheels.tar.[0-9]* 2>/dev/null | tr '\n' ' ')"
if [ "${1:-}" = "stash" ]; then
  exit 0
fi
parts=$(cat "$STASH/wheels.tar.parts" 2>/dev/null || echo 0)
for n in $(seq 1 "$parts"); do
  if [ ! -f "$STASH/wheels.tar.$n" ]; then parts=0; fi
done
if [ "$parts" -lt 1 ]; then
  say "error: wheel parts missing from $STASH (a fresh machine, or no part carried): make call 1 then call 2 again"
  exit 3
fi

# ---- install: reassemble, verify, pip --target (no network, no dependencies resolved) --------
if [ ! -f "$STASH/wheels/.verified" ]; then
  for n in $(seq 1 "$parts"); do cat "$STASH/wheels.tar.$n"; done >"$STASH/wheels.tar"
  if [ "$(sha256sum "$STASH/wheels.tar" | cut -d' ' -f1)" != "$(cat "$STASH/wheels.tar.sha256")" ]; then
    say "error: the reassembled wheels do not match their SHA-256: run benchmarks/gpu_wheels.sh, then both calls"
    exit 4
  fi
  rm -rf "$STASH/wheels" && mkdir -p "$STASH/wheels" && tar -x -C "$STASH/wheels" -f "$STASH/wheels.tar" \
    && rm "$STASH/wheels.tar" && touch "$STASH/wheels/.verified" || { say "error: cannot unpack the wheels"; exit 4; }
fi
say "wheels: $(cd "$STASH/wheels" && ls ./*.whl | tr '\n' ' ')"
if ! "$PY" -c "import tvm" >/dev/null 2>&1; then
  if [ ! -f "$SITE/.installed" ]; then
    timeout 150 "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target "$SITE" "$STASH"/wheels/*.whl >>"$LOG" 2>&1 || { say "error: pip install failed (see above)"; exit 5; }
    touch "$SITE/.installed"
  fi
  export PYTHONPATH=$SITE${PYTHONPATH:+:$PYTHONPATH}
fi
# The project from this checkout; targets/ and schedules/ ship inside the package (setup.py),
# which an uninstalled checkout mimics with two links (made on this machine's copy only).
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
if ! "$PY" -c "import mest_compile.targets, mest_compile.schedules" >/dev/null 2>&1; then
  ln -sfn ../targets mest_compile/targets
  ln -sfn ../schedules mest_compile/schedules
fi

# ---- TVM's CUDA runtime links libcudart.so.13 (and the driver's libcuda.so.1) --------------
purelib=$("$PY" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
for lib in libcudart.so.13 libcuda.so.1; do
  if ldconfig -p 2>/dev/null | grep -q "$lib"; then continue; fi
  dir=$(find "${CUDA_HOME:-/usr/local/cuda}/lib64" "${CUDA_HOME:-/usr/local/cuda}/targets/x86_64-linux/lib" /usr/local/cuda*/lib \
        /usr/local/cuda-13*/lib64 /usr/local/nvidia/lib64 /usr/lib/x86_64-linux-gnu "$purelib/nvidia" \
        -maxdepth 3 -name "$lib*" 2>/dev/null | head -n 1 | xargs -r dirname)
  if [ -n "$dir" ]; then
    export LD_LIBRARY_PATH=$dir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
    say "$lib from $dir"
  else
    say "warning: $lib not found"
  fi
done

{
  echo "== machine"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1
  timeout 60 "$PY" - <<'EOF' 2>&1
import os, sys, torch, tvm
from tvm_ffi import __version__ as ffi
print("python", sys.version.split()[0], "| torch", torch.__version__, "cuda", torch.version.cuda,
      "cudnn", torch.backends.cudnn.version(), "| tvm", tvm.__version__, "tvm-ffi", ffi)
print("torch sees", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU",
      "| tvm.cuda(0).exist:", tvm.cuda(0).exist)
lib = os.path.join(os.path.dirname(tvm.__file__), "lib", "libtvm_runtime_cuda.so")
print("ldd", lib, ":", os.popen(f"ldd {lib} | grep -E 'cudart|libcuda|not found'").read().strip())
EOF
} >>"$LOG"
say "installed and checked in $(( $(date +%s) - START )) s"

# ---- tests/device ----------------------------------------------------------------------------
t=$(( $(left) - 240 )); [ "$t" -gt 240 ] && t=240; [ "$t" -lt 60 ] && t=60
say "tests/device (timeout ${t} s)"
PYTHONUNBUFFERED=1 timeout "$t" "$PY" -m pytest -q -rs -p no:cacheprovider tests/device 2>&1 | tee "$OUT/device_tests.log"
tests_rc=${PIPESTATUS[0]}
say "tests/device: exit status $tests_rc"

# ---- the benchmark: whatever time is left ---------------------------------------------------
t=$(( $(left) - 10 )); [ "$t" -lt 60 ] && t=60
say "bench (timeout ${t} s)"
# shellcheck disable=SC2086  # BENCH_ARGS is a list of options
PYTHONUNBUFFERED=1 timeout "$t" "$PY" -c "import sys; sys.argv[0] = 'mest-compile'; from mest_compile.cli import main; main()" \
  bench --target cuda --model resnet32 --batch 64 --sparsity 0.9 --json "$OUT/gpu_bench.json" ${BENCH_ARGS:-} \
  2>&1 | tee "$OUT/gpu_bench.log"
bench_rc=${PIPESTATUS[0]}
say "bench: exit status $bench_rc; whole check $(( $(date +%s) - START )) s"
[ "$tests_rc" -eq 0 ] && [ "$bench_rc" -eq 0 ]
