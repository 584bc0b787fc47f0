"""benchmarks/gpu_check.py as a dry run: every check, CPU against CPU, at tiny sizes."""

from __future__ import annotations

import subprocess
import sys

from conftest import REPO

CHECKS = (
    "top_k_svd randomized",
    "top_k_svd exact",
    "spectrum",
    "ablate rank 1",
    "ablate full",
    "extrapolate two-point",
    "extrapolate relex",
    "alpharl",
    "logits score fp32",
    "logits generate bf16",
    "evaluate (lm-eval hf)",
)


def test_the_gpu_check_runs_on_the_cpu_and_every_check_passes():
    result = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), "--device", "cpu", "--quick"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    rows = [line for line in result.stdout.splitlines() if line.startswith("| ")]
    assert rows[0].startswith("| check | metric | value | tolerance | result | cpu s | cpu s")
    by_check = {row.split(" | ")[0].removeprefix("| "): row for row in rows[1:]}
    for check in CHECKS:
        assert check in by_check, f"{check} missing from\n{result.stdout}"
        assert "| PASS |" in by_check[check], by_check[check]
