"""The tap-overhead benchmark's tiny CPU mode runs end to end (the GPU modes share its code path)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_tap_overhead_benchmark_tiny_cpu_mode():
    out = subprocess.run([sys.executable, "bench/bench_tap_overhead.py", "--device", "cpu", "--shape", "tiny",
                          "--rounds", "1", "--block", "1", "--json"], check=False, cwd=REPO, capture_output=True,
                         text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert out.returncode == 0, out.stderr[-3000:]
    r = json.loads(out.stdout)
    assert r["shape"] == "tiny" and r["device"] == "cpu" and r["latents"] == 64
    assert set(r["workloads"]) == {"prefill", "generate"}
    for row in r["workloads"].values():
        assert {"none_ms", "raw_ms", "latent_ms", "raw_overhead_pct", "latent_overhead_pct"} <= set(row)
    # Every token of both tapped modes reached the sink, half of them as latents: prefill 2 x 16, generate
    # 2 x (8 prompt + 3 fed back), once per mode.
    per_mode = 2 * 16 + 2 * (8 + 3)
    assert r["tokens_dropped"] == 0 and r["tokens_delivered"] == 2 * per_mode and r["latent_tokens"] == per_mode
