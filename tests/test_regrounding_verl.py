"""The re-grounding target with train.backend verl, run for real through Snakemake on a CPU
with a stand-in for ``python -m verl.trainer.main_ppo`` (verl itself needs CUDA; that verl's
own Hydra config accepts a segment's overrides is checked in the verl environment below).

The stand-in moves every weight exactly linearly, W(step) = W(start) + step · δ, and saves
fp32 ``huggingface/`` weights as verl does with ``hf_model`` in save_contents. So each
segment must be a fresh verl run from the previous segment's extrapolated model, and the
chain (M, N) = (2, 2) must stand, after 2 segments (4 real steps), at the weights of step 8
(norm tensors, copied from each segment's end by two-point, at step 4).
"""

from __future__ import annotations

import copy
import json
import subprocess

import pandas as pd
import pytest
import torch
import yaml
from conftest import REPO, copy_workflow, run_snakemake, verl_python
from test_paper_rules import save_tiny

from rlpredict.checkpoints import ModelReader
from rlpredict.extrapolate import is_norm
from rlpredict.regrounding import plan_chain, verl_segment_config
from rlpredict.tables import training_seconds
from rlpredict.workflow import regrounding_backend_problem, regrounding_problems, schema_problems

DELTA = 1e-3

STAND_IN = f"""
import shutil
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

args = dict(a.split("=", 1) for a in sys.argv[1:])
start = Path(args["actor_rollout_ref.model.path"])
out = Path(args["trainer.default_local_dir"])
total, every = int(args["trainer.total_training_steps"]), int(args["trainer.save_freq"])
print("model_path", start, "seed", args["data.seed"], "steps", total, flush=True)
print("resume_mode", args["trainer.resume_mode"], flush=True)
weights = load_file(start / "model.safetensors")
for step in range(1, total + 1):
    print(f"(TaskRunner pid=7) step:{{step}} - critic/score/mean:0.5 - timing_s/step:0.25")
    if step % every == 0 or step == total:
        actor = out / f"global_step_{{step}}" / "actor"
        hf = actor / "huggingface"
        hf.mkdir(parents=True, exist_ok=True)
        for src in start.iterdir():
            if src.is_file() and src.suffix != ".safetensors" and src.name != "rlpredict_plan.json":
                shutil.copy2(src, hf / src.name)
        save_file({{k: v + step * {DELTA} for k, v in weights.items()}}, hf / "model.safetensors")
        for prefix in ("model", "optim", "extra_state"):
            torch.save({{"step": step}}, actor / f"{{prefix}}_world_size_1_rank_0.pt")
        torch.save({{"step": step}}, actor.parent / "data.pt")
        (out / "latest_checkpointed_iteration.txt").write_text(str(step))
"""

CONFIG = {
    "run": "rg_verl",
    "seed": 0,
    "task": {"train_size": 200, "dev_size": 50, "test_size": 50},
    "model": {"source": "local", "path": "elsewhere/base"},
    "train": {"backend": "verl", "steps": 8, "save_every": 4},
    "data": {"train": "generated"},
    "control": {"sft": {"enabled": False}},
    "ablate": {"enabled": False},
    "extrapolate": {"enabled": False},
    "linearity": {"enabled": False},
    "regrounding": {"pairs": [[2, 2]], "segments": 2},
    "keep_generated_models": True,  # the segment ends' weights are checked
}


# The chain's models and histories (its evaluations and table are the TRL test's subject).
SEGMENTS = [
    f"results/rg_verl/{path}"
    for k in (1, 2)
    for path in (
        f"models/regrounding/m2_n2/seg{k}/extrap",
        f"analysis/regrounding/m2_n2/seg{k}_history.csv",
    )
]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    workdir = copy_workflow(tmp_path_factory.mktemp("regrounding_verl"))
    stand_in = workdir / "stand_in" / "verl" / "trainer"
    stand_in.mkdir(parents=True)
    for package in (stand_in.parent, stand_in):
        (package / "__init__.py").write_text("")
    (stand_in / "main_ppo.py").write_text(STAND_IN)
    save_tiny(workdir / "elsewhere" / "base", seed=0)
    (workdir / "rg.yaml").write_text(yaml.safe_dump(CONFIG))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PYTHONPATH", str(workdir / "stand_in"))
        mp.delenv("SLURM_CPUS_ON_NODE", raising=False)
        result = run_snakemake(workdir, *SEGMENTS, "--cores", "2", "--configfile", "rg.yaml")
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-5000:]
    return workdir


def weights(model_dir) -> dict[str, torch.Tensor]:
    with ModelReader(model_dir) as reader:
        return {name: reader.get(name) for name in reader.names()}


def test_segments_are_fresh_verl_runs_from_the_previous_extrapolated_model(run):
    out = run / "results/rg_verl"
    log = (out / "logs/regrounding/m2_n2/train_seg2.log").read_text()
    start = (out / "models/regrounding/m2_n2/seg1/extrap").resolve()
    assert f"model_path {start} seed 0 steps 2" in log
    assert "resume_mode disable" in log
    # finished segments leave no verl checkpoints behind
    assert not (out / "regrounding_state/m2_n2/seg1").exists()
    history = (out / "analysis/regrounding/m2_n2/seg2_history.csv").read_text().splitlines()
    assert history[0].startswith("step,reward,reward_metric")
    assert [line.split(",")[0] for line in history[1:]] == ["1", "2"]
    assert history[1].endswith(",3") and history[2].endswith(",4")  # real steps 3 and 4


def test_linear_weights_put_the_chain_at_step_8_after_4_real_steps(run):
    """Non-norm tensors stand at the virtual step; norm tensors are copied from the segment
    end (two-point's norm policy), so they advance by the real steps only."""
    out = run / "results/rg_verl/models/regrounding/m2_n2"
    base = weights(run / "results/rg_verl/base")
    parts = {"seg1/end": (2, 2), "seg1/extrap": (4, 2), "seg2/end": (6, 4), "seg2/extrap": (8, 4)}
    for part, (virtual, real) in parts.items():
        got = weights(out / part)
        assert got.keys() == base.keys()
        for name, w in base.items():
            steps = real if is_norm(name) else virtual
            torch.testing.assert_close(got[name], w + steps * DELTA, rtol=0, atol=2e-6)


def test_segment_history_gives_the_segments_training_seconds(run):
    history = pd.read_csv(run / "results/rg_verl/analysis/regrounding/m2_n2/seg2_history.csv")
    seconds, source = training_seconds(history, 2)
    assert seconds == 0.5 and "timing_s/step" in source  # 2 steps of 0.25 s


def verl_config(**regrounding) -> dict:
    """CONFIG with the schema's defaults filled in, as the workflow sees it."""
    config = copy.deepcopy({**CONFIG, "regrounding": {**CONFIG["regrounding"], **regrounding}})
    assert schema_problems(config, REPO / "workflow/schemas/config.schema.yaml") == []
    return config


def test_continued_lr_with_warm_up_in_the_first_segment_is_a_run_of_its_own():
    config = verl_config(lr_schedule="continue")
    config["train"]["verl"]["lr_warmup_steps"] = 2
    chain = plan_chain(2, 2, segments=3, lr_mode="continue")
    first, second = (verl_segment_config(config, s, 6) for s in chain[:2])
    assert first["train"]["verl"]["lr_warmup_steps"] == 2
    assert second["train"]["verl"]["lr_warmup_steps"] == 0
    assert first["train"]["steps"] == second["train"]["steps"] == 2
    assert regrounding_backend_problem(config, {"m2_n2": chain}) is None


def test_reshuffled_segments_draw_prompts_with_their_own_seed():
    config = verl_config(data="reshuffle")
    chain = plan_chain(2, 2, segments=3, data="reshuffle")
    assert [verl_segment_config(config, s, 6)["seed"] for s in chain] == [0, 1, 2]


def test_verl_segments_refuse_what_a_fresh_verl_run_cannot_do():
    config = verl_config(lr_schedule="continue")
    config["train"]["verl"]["lr_warmup_steps"] = 3  # the ramp would cross into segment 2
    chain = plan_chain(2, 2, segments=2, lr_mode="continue")
    key, problem = regrounding_backend_problem(config, {"m2_n2": chain})
    assert key == "regrounding.lr_schedule" and "use restart" in problem
    config["train"]["verl"]["extra_overrides"] = [
        "actor_rollout_ref.actor.optim.warmup_style=cosine"
    ]
    config["train"]["verl"]["lr_warmup_steps"] = 0
    key, problem = regrounding_backend_problem(config, {"m2_n2": chain})
    assert key == "regrounding.lr_schedule"
    keep = verl_config(optimizer="keep")
    key, problem = regrounding_backend_problem(keep, {"m2_n2": plan_chain(2, 2, segments=2)})
    assert key == "regrounding.optimizer" and "fresh verl run" in problem


def test_an_unreachable_verl_segment_setting_stops_the_workflow_in_one_line(tmp_path):
    workdir = copy_workflow(tmp_path)
    save_tiny(workdir / "elsewhere" / "base", seed=0)
    config = {**CONFIG, "regrounding": {**CONFIG["regrounding"], "optimizer": "keep"}}
    (workdir / "rg.yaml").write_text(yaml.safe_dump(config))
    result = run_snakemake(workdir, "regrounding", "-n", "--configfile", "rg.yaml")
    assert result.returncode != 0
    assert "regrounding.optimizer" in result.stderr and "fresh verl run" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (workdir / "results" / "rg_verl").exists()


# ---------------------------------------------------------------------------------------
# verl's own Hydra config accepts a segment's overrides (in the verl environment).

COMPOSE = """
import json, sys
from hydra import compose, initialize_config_module
from verl.utils.config import validate_config
from verl.trainer.ppo.utils import need_critic, need_reference_policy

with initialize_config_module("verl.trainer.config", version_base=None):
    config = compose("ppo_trainer", overrides=json.loads(sys.argv[1]))
validate_config(config, need_reference_policy(config), need_critic(config))
print(json.dumps({
    "path": config.actor_rollout_ref.model.path,
    "steps": config.trainer.total_training_steps,
    "save_freq": config.trainer.save_freq,
    "warmup": config.actor_rollout_ref.actor.optim.lr_warmup_steps,
    "seed": config.data.seed,
}))
"""


def test_verl_composes_a_segment_run(tmp_path):
    from rlpredict.train.verl_backend import compose_overrides

    python = verl_python()
    config = verl_config(lr_schedule="continue")
    config["train"]["verl"]["lr_warmup_steps"] = 1
    segment = plan_chain(3, 5, segments=2, lr_mode="continue")[1]
    overrides = compose_overrides(
        verl_segment_config(config, segment, 6),
        model_path=tmp_path / "seg1_extrap",
        train_files=tmp_path / "train.parquet",
        checkpoint_dir=tmp_path / "verl",
    )
    found = subprocess.run(
        [str(python), "-c", COMPOSE, json.dumps(overrides)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert found.returncode == 0, found.stderr[-3000:]
    values = json.loads(found.stdout.strip().splitlines()[-1])
    assert values == {
        "path": str(tmp_path / "seg1_extrap"),
        "steps": 3,
        "save_freq": 3,
        "warmup": 0,
        "seed": 0,
    }


def test_a_run_trained_elsewhere_has_nothing_to_re_ground():
    config = verl_config(enabled=True)
    config["train"]["backend"] = "existing"
    assert regrounding_problems(config) == [
        (
            "train.backend",
            "re-grounding trains its segments with train.backend trl or verl, not existing",
        )
    ]
    config["regrounding"]["enabled"] = False
    assert regrounding_problems(config) == []


def test_a_regrounding_block_is_checked_when_set_even_if_not_enabled():
    config = verl_config(enabled=False, pairs=[[2, 2], [2, 2]])
    assert regrounding_problems(config) == []  # the block as the defaults leave it
    key, problem = regrounding_problems(config, ["pairs"])[0]
    assert key == "regrounding.pairs" and "listed twice" in problem


def test_pairs_longer_than_the_default_budget_name_the_default():
    config = verl_config(enabled=True, pairs=[[9, 2]], segments=None)
    [(key, problem)] = regrounding_problems(config)
    assert key == "regrounding.pairs"
    assert "budget of 8 real RL steps (regrounding.budget, by default train.steps)" in problem
