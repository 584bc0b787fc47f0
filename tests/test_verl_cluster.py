"""SLURM profile and per-rule conda envs of the GPU path.

The sbatch command lines come from snakemake-executor-plugin-slurm's own builders
(``get_submit_command`` and ``set_gres_string``) applied to real jobs of a dry-run DAG, with
the default resources of profiles/slurm; no cluster is needed.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
PROFILE = REPO / "profiles" / "slurm"
ENVS = REPO / "workflow" / "envs"

SNAKEFILE = """
rule all:
    input: "out/eval.json"

rule train:
    output: "out/model.txt"
    threads: 4
    resources:
        gpu=config["train_gpus"], gpu_model="h100", mem_mb=500000, runtime=1440, cpus_per_gpu=8
    shell: "touch {output}"

rule evaluate:
    input: "out/model.txt"
    output: "out/eval.json"
    resources:
        gpu=lambda wildcards: 2, gpu_model="a100", mem_mb=64000, runtime=240, cpus_per_gpu=4
    shell: "touch {output}"
"""


def sbatch_calls(
    workdir: Path, profile: Path, config: dict, targets: frozenset[str] = frozenset()
) -> dict[str, str]:
    """rule name -> the sbatch call the SLURM plugin builds for its job (of the default
    target, or of ``targets``)."""
    from snakemake.api import SnakemakeApi
    from snakemake.cli import parse_args
    from snakemake.common import SNAKEFILE_CHOICES
    from snakemake.settings.types import (
        ConfigSettings,
        DAGSettings,
        OutputSettings,
        ResourceSettings,
    )
    from snakemake_executor_plugin_slurm.submit_string import get_submit_command
    from snakemake_executor_plugin_slurm.utils import set_gres_string

    _, args = parse_args(["--profile", str(profile), "--snakefile", "Snakefile", "-n"])
    # The Snakefile `snakemake` itself would find in workdir (Snakefile, workflow/Snakefile, ...).
    snakefile = next(workdir / p for p in SNAKEFILE_CHOICES if (workdir / p).exists())
    assert args.executor == "slurm"
    calls = {}
    with SnakemakeApi(OutputSettings(quiet={"all"})) as api:
        workflow_api = api.workflow(
            resource_settings=ResourceSettings(
                cores=1, nodes=args.jobs, default_resources=args.default_resources
            ),
            config_settings=ConfigSettings(config=config),
            snakefile=snakefile,
            workdir=workdir,
        )
        workflow_api.dag(dag_settings=DAGSettings(targets=set(targets)))
        workflow = workflow_api._workflow
        workflow._prepare_dag(forceall=True, ignore_incomplete=True, lock_warn_only=True)
        workflow._build_dag()
        for job in workflow.dag.jobs:
            params = {
                "run_uuid": "run",
                "slurm_logfile": "slurm.log",
                "comment_str": f"rule_{job.name}",
                "account": "",
                "partition": "",
                "workdir": str(workdir),
            }
            calls[job.name] = get_submit_command(job, params) + set_gres_string(job)
    return calls


def test_plugin_maps_gpu_resources_to_sbatch_flags(tmp_path, monkeypatch):
    (tmp_path / "Snakefile").write_text(SNAKEFILE)
    monkeypatch.chdir(tmp_path)
    calls = sbatch_calls(tmp_path, PROFILE, {"train_gpus": 8})
    train, evaluate, rest = calls["train"], calls["evaluate"], calls["all"]
    print("\n".join(f"{k}: {v}" for k, v in calls.items()))
    assert "--gpus=h100:8" in train and "--mem 500000" in train
    assert "-t 1440" in train and "--cpus-per-gpu=8" in train
    assert "--gpus=a100:2" in evaluate and "--mem 64000" in evaluate
    assert "-t 240" in evaluate and "--cpus-per-gpu=4" in evaluate
    assert "--ntasks" not in train  # GPU jobs get no implicit task geometry
    # A rule without resources gets the profile's defaults and no GPU.
    assert "--mem 16000" in rest and "-t 120" in rest and "--gpus" not in rest


def test_profile_settings_and_every_entry_is_commented():
    text = (PROFILE / "config.yaml").read_text()
    profile = yaml.safe_load(text)
    assert profile["executor"] == "slurm"
    assert profile["software-deployment-method"] == "conda"
    assert profile["latency-wait"] >= 60 and profile["jobs"] >= 1
    assert set(profile["default-resources"]) >= {"mem_mb", "runtime"}
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if re.match(r"\s*[\w-]+:", line):  # an entry: the line above must explain it
            above = next(x for x in reversed(lines[:i]) if x.strip())
            assert above.strip().startswith("#"), f"profiles/slurm/config.yaml: {line!r}"


def pip_entries(name: str) -> list[str]:
    env = yaml.safe_load((ENVS / name).read_text())
    assert "python=3.11" in env["dependencies"], name
    pips = [d["pip"] for d in env["dependencies"] if isinstance(d, dict)]
    assert len(pips) == 1, name
    return pips[0]


@pytest.mark.parametrize("name", ["verl.yaml", "vllm-eval.yaml", "analysis.yaml", "cpu.yaml"])
def test_env_files_pin_every_package(name):
    for entry in pip_entries(name):
        assert entry.startswith("--") or re.fullmatch(r"[\w.\-]+(\[[\w,]+\])?==[\w.]+", entry), (
            f"workflow/envs/{name}: {entry!r} is not pinned"
        )


def test_env_files_pin_the_stack():
    assert "verl[vllm]==0.9.1" in pip_entries("verl.yaml")
    vllm_eval = pip_entries("vllm-eval.yaml")
    assert "vllm==0.33.0" in vllm_eval and "lm-eval[vllm,math]==0.4.13" in vllm_eval
    assert not any(e.startswith("verl") for e in vllm_eval)  # they cannot share an env
    cpu = pip_entries("cpu.yaml")
    assert "torch==2.13.0" in cpu
    assert "--extra-index-url https://download.pytorch.org/whl/cpu" in cpu
