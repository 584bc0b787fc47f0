"""The lr time axis uses the schedule of the backend that trained the run.

TRL's schedule is checked against transformers' own ``get_scheduler`` and verl's against
verl 0.9.1's own schedulers (run in the verl environment), step by step; the paper's
AlphaRL config (verl, constant lr) gives the two-point α of constant lr, not TRL's linear
decay; a run trained elsewhere needs its schedule from the config or its own record.
"""

from __future__ import annotations

import copy
import json
import subprocess
from pathlib import Path

import pytest
import torch
import yaml
from conftest import REPO, verl_python

from rlpredict.extrapolate import plan_extrapolation
from rlpredict.schedules import (
    LRSchedule,
    needs_lr_schedule,
    run_lr_schedule,
    trl_lr_schedule,
    verl_lr_schedule,
    verl_optim_settings,
)
from rlpredict.workflow import ConfigError, check_workflow_config

PAPER = REPO / "config" / "paper" / "alpharl_qwen3_8b_dapo.yaml"
STEPS = 40


def merged(*files: Path, **extra) -> dict:
    """config/config.yaml with ``files`` merged over it as snakemake --configfile does."""

    def merge(into: dict, new: dict) -> dict:
        for key, value in new.items():
            if isinstance(value, dict) and isinstance(into.get(key), dict):
                merge(into[key], value)
            else:
                into[key] = copy.deepcopy(value)
        return into

    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    for f in files:
        merge(config, yaml.safe_load(Path(f).read_text()))
    return merge(config, extra)


def validated(config: dict, files=()) -> list[int]:
    return check_workflow_config(config, REPO, [str(f) for f in files] or ["config.yaml"])


def lrs(schedule, n: int = STEPS) -> list[float]:
    return [schedule(s) for s in range(n)]


# ---------------------------------------------------------------------------------------
# The paper's AlphaRL run: verl, constant lr


def test_paper_alpharl_two_point_alpha_is_that_of_constant_lr():
    config = merged(PAPER)
    steps = validated(config, [PAPER])
    assert config["extrapolate"]["time"] == "lr"  # inherited from config/config.yaml
    schedule = run_lr_schedule(config, steps)
    assert schedule == LRSchedule("constant", 1e-6, 25)
    plan = plan_extrapolation("two-point", [1, 10], 25, time="lr", lr_schedule=schedule)
    assert plan.alpha == pytest.approx((25 - 1) / (10 - 1))  # 2.667
    trl_linear = trl_lr_schedule({"lr": 1e-6, "lr_schedule": "linear"}, 25)
    wrong = plan_extrapolation("two-point", [1, 10], 25, time="lr", lr_schedule=trl_linear)
    assert wrong.alpha == pytest.approx(1.667, abs=1e-3)  # what reading train.trl gave


# ---------------------------------------------------------------------------------------
# TRL: transformers' get_scheduler


@pytest.mark.parametrize(
    "kind, warmup",
    [("constant", 0), ("constant", 5), ("constant_with_warmup", 5), ("linear", 0)]
    + [("linear", 7), ("cosine", 0), ("cosine", 4)],
)
def test_trl_schedule_is_transformers_get_scheduler(kind, warmup):
    from transformers import get_scheduler

    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=2e-5)
    scheduler = get_scheduler(kind, optimizer, num_warmup_steps=warmup, num_training_steps=STEPS)
    expected = []
    for _ in range(STEPS):
        expected.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    trl = {"lr": 2e-5, "lr_schedule": kind, "warmup_steps": warmup}
    assert lrs(trl_lr_schedule(trl, STEPS)) == pytest.approx(expected, rel=1e-12, abs=1e-18)


def test_trl_run_reads_train_trl():
    config = merged(Path(REPO / "config" / "smoke.yaml"))
    steps = validated(config)
    assert config["train"]["backend"] == "trl"
    assert run_lr_schedule(config, steps) == trl_lr_schedule(
        config["train"]["trl"], config["train"]["steps"]
    )


# ---------------------------------------------------------------------------------------
# verl: its optimizer settings and its own schedulers

VERL_CASES = {
    "constant": {},
    "warm-up steps": {"lr_warmup_steps": 6},
    "warm-up ratio": {"lr_warmup_steps_ratio": 0.25},
    "cosine": {"lr_scheduler_type": "cosine", "lr_warmup_steps": 3},
    "cosine to a floor": {"lr_scheduler_type": "cosine", "min_lr_ratio": 0.1},
    "cosine, 1-based": {"lr_scheduler_type": "cosine", "zero_indexed_step": False},
    "two cosine waves": {"lr_scheduler_type": "cosine", "num_cycles": 1.0},
    "warmup_style (deprecated)": {"warmup_style": "cosine", "lr_warmup_steps_ratio": 0.1},
}


# Run in the verl environment: FSDPEngine._build_lr_scheduler on FSDPOptimizerConfig, stepped
# once per training step as verl's actor does after each update; argv: cases.json, steps.
VERL_LRS = """
import json, sys
from types import SimpleNamespace
import torch
from verl.workers.config import FSDPOptimizerConfig
from verl.workers.engine.fsdp.transformer_impl import FSDPEngine

cases, steps = json.loads(open(sys.argv[1]).read()), int(sys.argv[2])
found = {}
for name, settings in cases.items():
    config = FSDPOptimizerConfig(lr=1e-6, total_training_steps=steps, **settings)
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1e-6)
    engine = SimpleNamespace(optimizer_config=config, rank=1)
    scheduler = FSDPEngine._build_lr_scheduler(engine, optimizer)
    found[name] = []
    for _ in range(steps):
        found[name].append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
print(json.dumps(found))
"""


def verl_reference(cases: dict[str, dict], out: Path) -> dict[str, list[float]]:
    """Per-step lrs of verl's own FSDP engine scheduler for each optimizer setting."""
    (out / "cases.json").write_text(json.dumps(cases))
    result = subprocess.run(
        [str(verl_python()), "-c", VERL_LRS, str(out / "cases.json"), str(STEPS)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_verl_schedule_is_verls_own_scheduler(tmp_path):
    expected = verl_reference(VERL_CASES, tmp_path)
    for name, settings in VERL_CASES.items():
        ours = verl_lr_schedule({"lr": 1e-6, **settings}, STEPS)
        assert lrs(ours) == pytest.approx(expected[name], rel=1e-9, abs=1e-20), name


def test_verl_run_reads_the_composed_overrides_and_extra_overrides():
    config = merged(PAPER)
    config["train"]["verl"]["lr_warmup_steps"] = 3
    config["train"]["verl"]["extra_overrides"] = [
        "actor_rollout_ref.actor.optim.lr_scheduler_type=cosine",
        "actor_rollout_ref.actor.optim.min_lr_ratio=0.1",
    ]
    steps = validated(config, [PAPER])
    assert run_lr_schedule(config, steps) == LRSchedule("cosine", 1e-6, 25, 3, 1e-7)


def test_verl_override_parsing_keeps_the_last_value():
    optim, total = verl_optim_settings(
        [
            "actor_rollout_ref.actor.optim.lr=1e-06",
            "+actor_rollout_ref.actor.optim.warmup_style=null",
            "actor_rollout_ref.actor.optim.lr_warmup_steps=5",
            "actor_rollout_ref.actor.optim.lr_warmup_steps=-1",
            "trainer.total_training_steps=30",
        ]
    )
    assert optim["lr"] == 1e-6 and optim["warmup_style"] is None
    assert optim["lr_warmup_steps"] == -1 and total == 30


def test_a_schedule_verl_does_not_have_is_refused():
    with pytest.raises(ValueError, match="train.verl: verl's actor lr_scheduler_type"):
        verl_lr_schedule({"lr_scheduler_type": "linear"}, STEPS)


# ---------------------------------------------------------------------------------------
# train.backend existing: the config's schedule or the run's record, never a default


@pytest.fixture
def existing(tmp_path, monkeypatch) -> dict:
    """A config analysing a verl run saved at steps 10..40 in tmp_path (the working dir)."""
    monkeypatch.chdir(tmp_path)
    for step in (10, 20, 30, 40):
        (tmp_path / "verl_run" / f"global_step_{step}" / "actor").mkdir(parents=True)
    (tmp_path / "base").mkdir()
    return merged(
        model={"source": "local", "path": "base"},
        train={"backend": "existing", "existing": {"verl_dir": "verl_run"}},
        extrapolate={"windows": [0.5], "methods": ["two-point", "alpharl"]},
        control={"sft": {"enabled": False}},
        linearity={"enabled": False},
    )


def test_existing_run_without_a_known_schedule_is_one_clear_error(existing):
    with pytest.raises(ConfigError) as err:
        validated(existing)
    lines = str(err.value).splitlines()
    assert len(lines) == 1 and lines[0].startswith("config train.existing.lr_schedule: ")
    assert "rlpredict_run.json" in lines[0] and "extrapolate.time step" in lines[0]


def test_existing_run_on_the_step_axis_needs_no_schedule(existing):
    existing["extrapolate"]["time"] = "step"
    assert validated(existing) == [0, 10, 20, 30, 40]
    assert not needs_lr_schedule(existing["extrapolate"])


def test_existing_run_schedule_from_the_config(existing):
    existing["train"]["existing"].update(lr_schedule="linear", lr_warmup_steps=2)
    steps = validated(existing)
    assert run_lr_schedule(existing, steps) == LRSchedule("linear", 1.0, 40, 2)
    existing["train"]["existing"]["lr_total_steps"] = 100
    assert run_lr_schedule(existing, steps).total_steps == 100


def test_existing_verl_run_schedule_from_its_own_record(existing, tmp_path):
    overrides = [
        "actor_rollout_ref.actor.optim.lr=2e-06",
        "actor_rollout_ref.actor.optim.lr_warmup_steps=4",
        "trainer.total_training_steps=50",
    ]
    record = {"fingerprint": "0" * 64, "overrides": overrides}
    (tmp_path / "verl_run" / "rlpredict_run.json").write_text(json.dumps(record))
    steps = validated(existing)
    assert run_lr_schedule(existing, steps) == LRSchedule("constant", 2e-6, 50, 4)


def test_existing_run_with_only_alpharl_needs_no_schedule(existing):
    existing["extrapolate"]["methods"] = ["alpharl", "logits"]
    assert not needs_lr_schedule(existing["extrapolate"])
    validated(existing)
