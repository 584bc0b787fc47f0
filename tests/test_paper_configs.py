"""The paper configs plan their whole DAG with the SLURM profile, their GPU jobs ask SLURM for
the right GPUs, memory and time, and an existing verl run is analysed without training.

Dry runs and DAG building only: no GPU, verl, vLLM or network. The sbatch command lines come
from the SLURM plugin's own builders (see test_verl_cluster.sbatch_calls). Where conda is not
installed, the dry run swaps the profile's conda deployment for env-modules, which these
rules do not use (a dry run with conda asks `conda info`).
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import yaml
from conftest import REPO, copy_workflow, run_snakemake
from test_verl_cluster import sbatch_calls

from rlpredict.workflow import checkpoint_steps

PAPER = sorted((REPO / "config" / "paper").glob("*.yaml"))
PROFILE = REPO / "profiles" / "slurm"
NO_CONDA = [] if shutil.which("conda") else ["--sdm", "env-modules"]
# GPUs per training job and per evaluation job, as each setup intends.
GPUS = {
    "alpharl_qwen3_8b_dapo": (8, 8),
    "rlvr_linearity_r1distill_1p5b": (8, 8),
    "single_gpu_qwen2p5_math_1p5b": (1, 1),
}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    workdir = copy_workflow(tmp_path_factory.mktemp("paper"))
    if not (workdir / "resources").exists():  # the math benchmarks the evaluations read
        shutil.copytree(REPO / "resources", workdir / "resources")
    return workdir


def job_counts(stdout: str) -> dict[str, int]:
    """The dry run's job table: rule name -> number of jobs."""
    return {m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)$", stdout, re.M)}


def evaluate_jobs(stdout: str) -> list[tuple[str, str, str]]:
    """(results dir, output, resources) of each planned ``evaluate`` job of a dry run; the
    dir is eval (the test split) or eval_dev (the dev split)."""
    line = r"(?:[ \t]+.*\n)*?[ \t]+"  # the lines of one job's entry, up to the next key
    jobs = re.findall(
        rf"^rule evaluate:\n{line}output: (\S+)\n{line}resources: (.*)$", stdout, re.M
    )
    return [(re.search(r"/(eval|eval_dev)/", out)[1], out, res) for out, res in jobs]


def test_every_paper_setup_is_there():
    assert {p.stem for p in PAPER} == set(GPUS)


@pytest.mark.parametrize("path", PAPER, ids=lambda p: p.stem)
def test_dry_run_with_the_slurm_profile(workdir, path):
    result = run_snakemake(
        workdir, "-n", "--profile", "profiles/slurm", *NO_CONDA, "--configfile", str(path)
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    config = yaml.safe_load(path.read_text())
    steps = checkpoint_steps(config["train"]["steps"], config["train"]["save_every"])
    counts = job_counts(result.stdout)
    evaluations = evaluate_jobs(result.stdout)
    test_jobs = [job for job in evaluations if job[0] == "eval"]
    dev_jobs = [job for job in evaluations if job[0] == "eval_dev"]
    assert counts["base_model"] == counts["export_verl_data"] == counts["train_rl"] == 1
    assert counts["convert_checkpoint"] == len(steps)
    assert counts["evaluate"] == len(evaluations) and len(test_jobs) >= len(steps)
    assert counts["spectrum"] == len(steps) - 1 and counts["ablate"] >= 1
    assert "train_sft_control" not in counts
    # every analysis of both papers: AlphaRL on vLLM dev labels, logits, all linearity
    windows = config["extrapolate"]
    assert (
        windows["alpharl"]["targets"] == ["forecast", "oracle"] and "logits" in windows["methods"]
    )
    assert counts["make_dev_split"] == 1 and len(dev_jobs) == len(steps)
    # the dev split is scored by the vLLM rule on the evaluation GPUs, never the hf backend
    eval_gpus = GPUS[path.stem][1]
    assert all(f"gpu={eval_gpus}," in resources for _, _, resources in dev_jobs)
    # and with the same resources as the test split: the sbatch flags checked below hold for both
    assert len({resources for _, _, resources in evaluations}) == 1
    assert counts["alpharl"] >= 2 and counts["evaluate_logits"] >= 1
    for rule in ("weight_linearity", "logprob_linearity", "rank1_linearity", "linearity_report"):
        assert counts[rule] == 1, rule
    assert not (workdir / "results").exists()


@pytest.mark.parametrize("path", PAPER, ids=lambda p: p.stem)
def test_sbatch_flags_of_training_and_evaluation(workdir, path, monkeypatch):
    monkeypatch.chdir(workdir)
    config = yaml.safe_load(path.read_text())
    config["train"]["resources"]["gpu_model"] = "h100"  # a cluster's GPU type, as users set it
    calls = sbatch_calls(workdir, PROFILE, config)
    train_gpus, eval_gpus = GPUS[path.stem]
    train, evaluate = config["train"]["resources"], config["eval"]["resources"]
    assert evaluate["gpu_model"] == ""  # as shipped: any GPU
    print(f"{path.stem}\n  train_rl: {calls['train_rl']}\n  evaluate: {calls['evaluate']}")

    call = calls["train_rl"]
    assert f"--gpus=h100:{train_gpus}" in call
    assert f"--mem {train['mem_mb']}" in call and f"-t {train['runtime']}" in call
    assert f"--cpus-per-gpu={train['cpus_per_gpu']}" in call

    call = calls["evaluate"]
    assert re.search(rf"--gpus={eval_gpus}(\s|$)", call)
    assert f"--mem {evaluate['mem_mb']}" in call and f"-t {evaluate['runtime']}" in call
    assert f"--cpus-per-gpu={evaluate['cpus_per_gpu']}" in call

    # both splits are jobs of the one evaluate rule (its dev jobs' GPUs: the dry run above)
    for one_gpu_rule in ("evaluate_logits", "logprob_linearity"):  # HF models on one GPU
        assert re.search(r"--gpus=1(\s|$)", calls[one_gpu_rule]), one_gpu_rule
        assert f"--mem {evaluate['mem_mb']}" in calls[one_gpu_rule]
    cpu_rules = ("base_model", "export_verl_data", "convert_checkpoint", "ablate", "spectrum")
    for cpu_rule in (*cpu_rules, "make_dev_split", "alpharl", "rank1_linearity"):
        assert "--gpus" not in calls[cpu_rule], cpu_rule
    assert "--mem 32000" in calls["convert_checkpoint"] and "-t 120" in calls["convert_checkpoint"]


def test_existing_verl_run_is_analysed_without_training(workdir, monkeypatch):
    run_dir = workdir / "elsewhere" / "verl_run"
    for step in (10, 20, 30, 40):
        (run_dir / f"global_step_{step}" / "actor").mkdir(parents=True)
    (run_dir / "latest_checkpointed_iteration.txt").write_text("30")  # step 40 is incomplete
    (workdir / "elsewhere" / "base").mkdir()
    config = {
        "run": "existing_demo",
        "model": {"source": "local", "path": "elsewhere/base"},
        "train": {
            "backend": "existing",
            # the run's lr schedule, for config.yaml's lr time axis
            "existing": {"verl_dir": "elsewhere/verl_run", "lr_schedule": "constant"},
        },
        "eval": {"backend": "vllm", "tasks": ["rlpredict_math500"]},
        "control": {"sft": {"enabled": False}},
        # windows holding a checkpoint of this run (10, 20, 30): an empty one is an error
        "extrapolate": {
            "windows": [0.4, 0.7],
            "methods": ["two-point", "lstsq-free", "lstsq-anchored", "expo", "relex"],
        },
        "linearity": {"enabled": False},
    }
    (workdir / "existing.yaml").write_text(yaml.safe_dump(config))
    result = run_snakemake(
        workdir, "-n", "--profile", "profiles/slurm", *NO_CONDA, "--configfile", "existing.yaml"
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    counts = job_counts(result.stdout)
    assert "export_verl_data" not in counts
    assert counts["convert_checkpoint"] == 4  # the base and steps 10, 20, 30
    for step in (10, 20, 30):
        assert f"elsewhere/verl_run/global_step_{step}/actor" in result.stdout
    assert "global_step_40" not in result.stdout

    monkeypatch.chdir(workdir)
    calls = sbatch_calls(workdir, PROFILE, config)
    assert "--gpus" not in calls["train_rl"]  # records the run's history; trains nothing
    assert "--gpus" not in calls["convert_checkpoint"] and "--gpus=1" in calls["evaluate"]
