"""The pretrained path: config/pretrained.yaml and config/pretrained_smoke.yaml plan every rule
of a TRL + HF run (cheap dry runs), and the real DAG on the real SmolLM2-135M-Instruct base
(GRPO with TRL, lm-eval in the chat template, every analysis) on config/pretrained_smoke.yaml."""

import json
import re
import shutil

import pandas as pd
import pytest
import torch
import yaml
from conftest import REPO, copy_workflow, run_snakemake
from safetensors.torch import load_file

SMOKE = "config/pretrained_smoke.yaml"
CONFIG = yaml.safe_load((REPO / SMOKE).read_text())
STEPS = list(range(0, CONFIG["train"]["steps"] + 1, CONFIG["train"]["save_every"]))
# Rules of the other backends: verl training and vLLM evaluation (not a TRL + HF run).
OTHER_BACKENDS = ("verl.smk", "vllm.smk")


def rule_names(files) -> set[str]:
    return {name for path in files for name in re.findall(r"^rule (\w+):", path.read_text(), re.M)}


def trl_hf_rules() -> set[str]:
    """Every rule a TRL + HF run can use in its default target: all rule files except the
    other backends' own and the re-grounding target's (its own test below)."""
    rules = (REPO / "workflow" / "rules").glob("*.smk")
    skip = (*OTHER_BACKENDS, "regrounding.smk")
    return rule_names(p for p in rules if p.name not in skip) | {"all"}


def regrounding_rules() -> set[str]:
    """The rules of the regrounding target (the training rule is defined per backend)."""
    text = (REPO / "workflow" / "rules" / "regrounding.smk").read_text()
    return set(re.findall(r"^\s*rule (\w+):", text, re.M))


def planned_jobs(stdout: str) -> dict[str, int]:
    """Job counts from the job-stats table of a dry run."""
    table = stdout.split("Job stats:", 1)[1].split("total", 1)[0]
    return {m[0]: int(m[1]) for m in re.findall(r"^(\w+)\s+(\d+)$", table, re.M)}


def evaluated_splits(stdout: str) -> dict[str, int]:
    """Number of planned ``evaluate`` jobs per results dir they write: eval (the test split)
    and eval_dev (the dev split), from the job list of a dry run."""
    outputs = re.findall(r"^rule evaluate:\n(?:[ \t]+.*\n)*?[ \t]+output: (\S+)", stdout, re.M)
    dirs = [re.search(r"/(eval|eval_dev)/", path)[1] for path in outputs]
    return {name: dirs.count(name) for name in set(dirs)}


def dry_run_stdout(tmp_path, configfile: str) -> str:
    result = run_snakemake(copy_workflow(tmp_path), "-n", "--configfile", configfile)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def dry_run(tmp_path, configfile: str) -> dict[str, int]:
    return planned_jobs(dry_run_stdout(tmp_path, configfile))


@pytest.mark.parametrize("configfile", ["config/pretrained.yaml", SMOKE])
def test_dry_run_plans_every_rule_of_a_trl_hf_run(tmp_path, configfile):
    jobs = dry_run(tmp_path, configfile)
    assert set(jobs) == trl_hf_rules()


def test_pretrained_regrounding_plans_the_jobs_its_measurement_counts(tmp_path):
    """config/pretrained.yaml's regrounding block: 2 chains × 3 segments, each end and
    extrapolated model evaluated, with the standard run: the 36 jobs its comment measured."""
    result = run_snakemake(
        copy_workflow(tmp_path), "regrounding", "-n", "--configfile", "config/pretrained.yaml"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    jobs = planned_jobs(result.stdout)
    assert regrounding_rules() <= set(jobs)
    assert (jobs["regrounding_train"], jobs["regrounding_extrapolate"]) == (6, 6)
    assert jobs["evaluate"] == 12 + len(range(0, 21, 4))
    assert sum(jobs.values()) == 36
    assert "36 jobs" in (REPO / "config" / "pretrained.yaml").read_text()


def test_pretrained_config_evaluates_the_models_its_time_estimate_counts(tmp_path):
    """The time estimate at the top of config/pretrained.yaml counts these evaluations: 18
    models on the test split, one logits extrapolation (two models per token) and 6
    checkpoints on the dev split. A config change that adds evaluations must redo it."""
    stdout = dry_run_stdout(tmp_path, "config/pretrained.yaml")
    jobs, splits = planned_jobs(stdout), evaluated_splits(stdout)
    assert (splits["eval"], jobs["evaluate_logits"], splits["eval_dev"]) == (18, 1, 6)
    assert jobs["evaluate"] == splits["eval"] + splits["eval_dev"]  # one rule, both splits
    text = (REPO / "config" / "pretrained.yaml").read_text()
    assert "18 models" in text and "6 checkpoints" in text


# --- the real run --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pretrained_run(tmp_path_factory):
    """The real pipeline on config/pretrained_smoke.yaml, run once for the tests below."""
    workdir = copy_workflow(tmp_path_factory.mktemp("pretrained_smoke"))
    result = run_snakemake(workdir, "--cores", "2", "--configfile", SMOKE)
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-5000:]
    yield workdir
    shutil.rmtree(workdir)  # ~7 GB of fp32 models and optimizer state


def results(workdir):
    return workdir / "results" / CONFIG["run"]


def check_checkpoints(out):
    """Base and every RL checkpoint are fp32 HF dirs; step 0 is the base; RL moved weights."""
    base = load_file(out / "base" / "model.safetensors")
    assert all(t.dtype == torch.float32 for t in base.values())
    config = json.loads((out / "base" / "config.json").read_text())
    assert config["model_type"] == "llama" and "quantization_config" not in config
    ckpts = out / "checkpoints"
    assert sorted(int(p.name.split("_")[1]) for p in ckpts.iterdir()) == STEPS
    step0 = load_file(ckpts / "step_0" / "model.safetensors")
    final = load_file(ckpts / f"step_{STEPS[-1]}" / "model.safetensors")
    assert base.keys() == step0.keys() == final.keys()
    assert all(t.dtype == torch.float32 for t in final.values())
    assert all(torch.equal(base[k], step0[k]) for k in base)
    assert any(not torch.equal(base[k], final[k]) for k in base)
    for step in STEPS[1:]:
        assert (out / "models" / "sft" / f"step_{step}" / "model.safetensors").exists()


def check_eval_jsons(out):
    """Every evaluation holds greedy and sampled (avg@k) accuracy; the headline is the one
    eval.accuracy names."""
    evals = sorted((out / "eval").rglob("*.json")) + sorted((out / "eval_dev").rglob("*.json"))
    assert len(evals) >= len(STEPS) * 2 + 4
    for path in evals:
        result = json.loads(path.read_text())
        assert {"greedy", "sampled"} <= set(result), path
        sampled = result["sampled"]
        assert sampled["k"] == CONFIG["eval"]["repeats"], path
        assert sampled["temperature"] == CONFIG["eval"]["temperature"], path
        assert result["accuracy"] == result[CONFIG["eval"]["accuracy"]]["accuracy"], path
        assert 0 <= result["greedy"]["accuracy"] <= 1 and 0 <= sampled["accuracy"] <= 1, path
    test_n = {json.loads(p.read_text())["n"] for p in (out / "eval").rglob("*.json")}
    assert test_n == {CONFIG["task"]["test_size"]}
    dev_n = {json.loads(p.read_text())["n"] for p in (out / "eval_dev").rglob("*.json")}
    assert dev_n == {CONFIG["task"]["dev_size"]}


def check_generated_models_removed(out):
    """Ablated and extrapolated models are deleted once evaluated (keep_generated_models
    false); their evaluations stay."""
    assert not list((out / "models" / "ablate").glob("*/*/model.safetensors"))
    assert not list((out / "models" / "extrap").glob("*/*/model.safetensors"))
    assert (out / "eval" / "ablate" / "rl" / "rank1.json").exists()
    assert (out / "eval" / "extrap" / "two-point").is_dir()


def check_tables(out):
    """Every table is written and agrees with the evaluations it is made from."""
    tables = out / "tables"
    for name in ("accuracy_vs_step", "rank_ablation", "speedup_vs_accuracy", "linearity"):
        for ext in ("csv", "html"):
            assert (tables / f"{name}.{ext}").stat().st_size > 0, (name, ext)
    for name in ("claims.csv", "claims.md", "claims.html"):
        assert (tables / name).stat().st_size > 0, name

    accuracy = pd.read_csv(tables / "accuracy_vs_step.csv")
    assert accuracy["step"].tolist() == STEPS
    for step, value in zip(accuracy["step"], accuracy["accuracy"], strict=True):
        reported = json.loads((out / "eval" / f"step_{step}.json").read_text())["accuracy"]
        assert value == pytest.approx(reported)

    ablation = pd.read_csv(tables / "rank_ablation.csv", dtype={"rank": str})
    assert sorted(set(ablation["source"])) == ["rl", "sft"]
    for row in ablation.itertuples():
        path = out / "eval" / "ablate" / row.source / f"rank{row.rank}.json"
        reported = json.loads(path.read_text())
        assert row.accuracy == pytest.approx(reported["accuracy"])

    speedup = pd.read_csv(tables / "speedup_vs_accuracy.csv")
    expected = {"two-point", "lstsq-free", "lstsq-anchored", "expo-a1.5", "relex"}
    expected |= {"alpharl-forecast", "alpharl-oracle", "logits"}
    assert set(speedup["method"]) == expected
    assert speedup["accuracy"].notna().all()
    assert speedup["accuracy"].between(0, 1).all()

    linearity = pd.read_csv(tables / "linearity.csv")
    medians = linearity[linearity["statistic"] == "median R²"].set_index("what")["value"]
    assert len(medians) == 3 and medians.notna().all()

    from rlpredict.claims import COLUMNS, VERDICTS

    claims = pd.read_csv(tables / "claims.csv").set_index("id")
    assert list(claims.reset_index().columns) == COLUMNS
    assert claims["verdict"].isin(VERDICTS).all()
    rl1 = ablation[(ablation["source"] == "rl") & (ablation["rank"] == "1")].iloc[0]
    assert claims.loc["C1", "value"] == pytest.approx(rl1["relative_accuracy"])


CHECKS = (check_checkpoints, check_eval_jsons, check_generated_models_removed, check_tables)


@pytest.mark.e2e
@pytest.mark.parametrize("check", CHECKS, ids=lambda f: f.__name__)
def test_pretrained_smoke_run(pretrained_run, check):
    check(results(pretrained_run))


@pytest.mark.e2e
def test_second_pretrained_run_has_nothing_to_do(pretrained_run):
    result = run_snakemake(pretrained_run, "-n", "--configfile", SMOKE)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Nothing to be done" in result.stdout + result.stderr
