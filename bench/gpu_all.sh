#!/usr/bin/env bash
# Every GPU check and benchmark of issue 17 in one run, for a machine with a CUDA GPU. Writes to $OUT
# (default bench/results-gpu): nvidia-smi, the CUDA tap tests, and bench_tap_overhead.py for the Llama-3-8B
# and SmolLM2 shapes (random weights, bf16, modes none / raw / latent interleaved). About 5 minutes on an
# H200 (model init ~10 s each; llama3-8b: 8 rounds x 2 calls x 3 modes of prefill 8 x 512 and generate
# 32 x 64 new tokens).
#
#   OUT=/some/dir bash bench/gpu_all.sh          # PY=python3 to use another interpreter
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-bench/results-gpu}
mkdir -p "$OUT"
if [[ -z "${PY:-}" ]]; then
  if [[ -x .venv/bin/python ]]; then PY=.venv/bin/python; else PY=python3; fi
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
status=0
step() {  # step NAME COMMAND...: run, keep stdout and stderr, note the exit status
  local name=$1; shift
  echo "== $name: $*"
  local t0=$SECONDS
  "$@" > "$OUT/$name.out" 2> "$OUT/$name.err"
  local rc=$?
  echo "   rc=$rc in $((SECONDS - t0)) s"
  echo "$name rc=$rc seconds=$((SECONDS - t0))" >> "$OUT/summary.txt"
  [[ $rc -eq 0 ]] || status=1
}
: > "$OUT/summary.txt"
step nvidia-smi nvidia-smi
step versions "$PY" -c "import torch, transformers; print(torch.__version__, torch.version.cuda, transformers.__version__, torch.cuda.get_device_name())"
step test_tap_cuda "$PY" -m pytest -q -p no:cacheprovider tests/test_tap_cuda.py
step tap_tiny_cuda "$PY" bench/bench_tap_overhead.py --device cuda --shape tiny --rounds 2 --json
step tap_llama3-8b "$PY" bench/bench_tap_overhead.py --device cuda --shape llama3-8b --rounds 8 --json
step tap_smollm2 "$PY" bench/bench_tap_overhead.py --device cuda --shape smollm2 --rounds 8 --json
cat "$OUT/summary.txt"
exit $status
