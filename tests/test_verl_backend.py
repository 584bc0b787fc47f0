"""Override composition for ``python -m verl.trainer.main_ppo`` and the resume guard.

Every paper config's overrides go through verl's own entry point with ``--cfg job`` (run as
``-m`` does, through runpy) in the separate verl environment (``make verl-env``), then
through the config validation verl's ``main`` runs before it starts Ray; the printed config
is parsed and its values checked. Run as a script (``python tests/test_verl_backend.py
compose SPECS OUT``) in the verl environment, this file does that composition.
"""

from __future__ import annotations

import contextlib
import io
import json
import runpy
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import verl_python

REPO = Path(__file__).resolve().parents[1]
PAPER = REPO / "config" / "paper"
REWARD_FILE = REPO / "src" / "rlpredict" / "train" / "verl_reward.py"


# ---------------------------------------------------------------------------------------
# Composition side: runs in the verl environment.


def compose_in_verl(specs_file: Path, out_dir: Path) -> None:
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra
    from verl.trainer.ppo.utils import need_critic, need_reference_policy
    from verl.utils.config import validate_config

    specs = json.loads(specs_file.read_text())
    for name, overrides in specs.items():
        printed = io.StringIO()
        sys.argv = ["verl.trainer.main_ppo", "--cfg", "job", *overrides]
        with contextlib.redirect_stdout(printed):
            runpy.run_module("verl.trainer.main_ppo", run_name="__main__", alter_sys=True)
        GlobalHydra.instance().clear()
        (out_dir / f"{name}.yaml").write_text(printed.getvalue())
        with initialize_config_module("verl.trainer.config", version_base=None):
            config = compose("ppo_trainer", overrides=overrides)
        validate_config(config, need_reference_policy(config), need_critic(config))
        GlobalHydra.instance().clear()


# ---------------------------------------------------------------------------------------
# Tests: run in the project environment.


def paper_configs() -> dict[str, dict]:
    configs = {p.stem: yaml.safe_load(p.read_text()) for p in sorted(PAPER.glob("*.yaml"))}
    assert len(configs) >= 3
    return configs


def compose(config: dict, tmp_path: Path, model_path: str | Path | None = None) -> list[str]:
    from rlpredict.train.verl_backend import launch_command

    command = launch_command(
        config,
        model_path=model_path or config["model"]["path"],
        train_files=tmp_path / "data" / "train.parquet",
        checkpoint_dir=tmp_path / "verl" / config["run"],
    )
    assert command[:3] == ["python", "-m", "verl.trainer.main_ppo"]
    return command[3:]


def test_paper_configs_are_accepted_by_verl(tmp_path):
    from rlpredict.train.verl_backend import PLAIN_CHAT_TEMPLATE

    configs = paper_configs()
    local_model = tmp_path / "model_without_template"  # exercises custom_chat_template
    local_model.mkdir()
    (local_model / "tokenizer_config.json").write_text('{"model_max_length": 4096}')
    specs = {}
    for i, (name, config) in enumerate(configs.items()):
        specs[name] = compose(config, tmp_path, local_model if i == 0 else None)
    (tmp_path / "specs.json").write_text(json.dumps(specs))
    result = subprocess.run(
        [str(verl_python()), __file__, "compose", str(tmp_path / "specs.json"), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    for i, (name, config) in enumerate(configs.items()):
        job = yaml.safe_load((tmp_path / f"{name}.yaml").read_text())
        train, verl = config["train"], config["train"]["verl"]
        actor, rollout = job["actor_rollout_ref"]["actor"], job["actor_rollout_ref"]["rollout"]
        trainer = job["trainer"]
        assert actor["optim"]["lr"] == verl["lr"], name
        assert rollout["n"] == verl["rollout_n"], name
        assert rollout["tensor_model_parallel_size"] == 1 and rollout["name"] == "vllm", name
        assert job["data"]["train_batch_size"] == verl["train_batch_size"], name
        assert job["data"]["max_response_length"] == verl["max_response_length"], name
        assert trainer["save_freq"] == train["save_every"], name
        assert trainer["total_training_steps"] == train["steps"], name
        assert trainer["n_gpus_per_node"] == verl["gpus_per_node"], name
        assert trainer["nnodes"] == verl["nnodes"], name
        assert trainer["logger"] == ["console"], name
        assert trainer["val_before_train"] is False and trainer["test_freq"] == -1, name
        assert trainer["resume_mode"] == "disable", name
        assert trainer["default_local_dir"] == str((tmp_path / "verl" / name).resolve()), name
        assert actor["checkpoint"]["save_contents"] == verl["save_contents"], name
        assert actor["fsdp_config"]["model_dtype"] == "fp32", name
        assert actor["optim"]["clip_grad"] == verl.get("grad_clip", 1.0), name
        model = job["actor_rollout_ref"]["model"]
        assert model["override_config"]["attn_implementation"] == "sdpa", name
        assert model["use_remove_padding"] is False, name  # packing needs flash attention
        assert actor["use_kl_loss"] is False, name
        custom = job["reward"]["custom_reward_function"]
        assert custom == {"path": str(REWARD_FILE), "name": "compute_score"}, name
        template = job["actor_rollout_ref"]["model"]["custom_chat_template"]
        assert template == (PLAIN_CHAT_TEMPLATE if i == 0 else None), name
        if verl["algorithm"] == "dapo":
            assert (actor["clip_ratio_low"], actor["clip_ratio_high"]) == (0.2, 0.28), name
            assert actor["loss_agg_mode"] == "token-mean", name
            assert job["algorithm"]["filter_groups"]["enable"] is True, name
            assert job["algorithm"]["filter_groups"]["metric"] == "acc", name
            assert job["algorithm"]["filter_groups"]["max_inflight_gen_batches"] == 1, name
            assert job["reward"]["reward_manager"]["name"] == "dapo", name
            overlong = job["reward"]["reward_kwargs"]["overlong_buffer_cfg"]
            assert overlong["enable"] is True, name
            assert overlong["len"] == verl["overlong_buffer_len"], name
            assert job["reward"]["reward_kwargs"]["max_resp_len"] == verl["max_response_length"]
        else:
            assert (actor["clip_ratio_low"], actor["clip_ratio_high"]) == (0.2, 0.2), name
            assert job["algorithm"]["filter_groups"]["enable"] is False, name
            assert job["reward"]["reward_manager"]["name"] == "naive", name


def test_resume_only_into_the_same_run(tmp_path):
    from rlpredict.train.verl_backend import FINGERPRINT_FILE, launch_command

    config = paper_configs()["single_gpu_qwen2p5_math_1p5b"]
    ckpt = tmp_path / "verl"
    kwargs = dict(model_path="m", train_files=tmp_path / "t.parquet", checkpoint_dir=ckpt)
    assert launch_command(config, **kwargs)[-1] == "trainer.resume_mode=disable"
    assert (ckpt / FINGERPRINT_FILE).is_file()
    # Rerun before any checkpoint exists: still a fresh start.
    assert launch_command(config, **kwargs)[-1] == "trainer.resume_mode=disable"
    save_verl_checkpoint(ckpt, 10)
    (ckpt / "latest_checkpointed_iteration.txt").write_text("10")
    assert launch_command(config, **kwargs)[-1] == "trainer.resume_mode=auto"
    longer = {**config, "train": {**config["train"], "steps": 200}}  # extending may resume
    assert launch_command(longer, **kwargs)[-1] == "trainer.resume_mode=auto"
    other_lr = {**config["train"]["verl"], "lr": 2.0e-6}
    changed = {**config, "train": {**config["train"], "verl": other_lr}}
    with pytest.raises(RuntimeError, match="different run"):
        launch_command(changed, **kwargs)
    (ckpt / FINGERPRINT_FILE).unlink()
    with pytest.raises(RuntimeError, match="without rlpredict_run.json"):
        launch_command(config, **kwargs)


def save_verl_checkpoint(ckpt: Path, step: int, world: int = 2) -> Path:
    """The files verl's trainer writes for one step (tiny torch archives)."""
    import torch

    step_dir = ckpt / f"global_step_{step}"
    (step_dir / "actor").mkdir(parents=True)
    for prefix in ("model", "optim", "extra_state"):
        for rank in range(world):
            torch.save(
                {"rank": rank}, step_dir / "actor" / f"{prefix}_world_size_{world}_rank_{rank}.pt"
            )
    torch.save({"dataloader": step}, step_dir / "data.pt")
    return step_dir


@pytest.mark.parametrize(
    ("damage", "tracker"),
    [
        (lambda d: (d / "data.pt").unlink(), "20"),  # killed before the dataloader state
        (lambda d: (d / "actor" / "optim_world_size_2_rank_1.pt").write_bytes(b"PK"), "20"),
        (lambda d: None, ""),  # killed while the tracker was being written
    ],
)
def test_resume_from_the_newest_complete_checkpoint(tmp_path, caplog, damage, tracker):
    from rlpredict.train.verl_backend import launch_command, verl_checkpoint_problem

    config = paper_configs()["single_gpu_qwen2p5_math_1p5b"]
    ckpt = tmp_path / "verl"
    kwargs = dict(model_path="m", train_files=tmp_path / "t.parquet", checkpoint_dir=ckpt)
    launch_command(config, **kwargs)
    save_verl_checkpoint(ckpt, 10)
    newest = save_verl_checkpoint(ckpt, 20)
    damage(newest)
    (ckpt / "latest_checkpointed_iteration.txt").write_text(tracker)
    contents = config["train"]["verl"].get("save_contents", ["model", "optimizer", "extra"])
    expected = 10 if verl_checkpoint_problem(newest, contents) else 20
    assert launch_command(config, **kwargs)[-1] == "trainer.resume_mode=auto"
    assert (ckpt / "latest_checkpointed_iteration.txt").read_text() == str(expected)
    if expected == 10:
        assert "global_step_20" in caplog.text
    # Nothing complete left: a fresh start, not a resume from nothing.
    for step_dir in ckpt.glob("global_step_*"):
        (step_dir / "data.pt").unlink(missing_ok=True)
    assert launch_command(config, **kwargs)[-1] == "trainer.resume_mode=disable"
    assert not (ckpt / "latest_checkpointed_iteration.txt").exists()


def test_settings_are_checked_and_name_the_key():
    from rlpredict.train.verl_backend import VerlConfigError, compose_overrides

    base = {"run": "r", "train": {"steps": 2, "save_every": 1, "verl": {}}}
    paths = dict(model_path="m", train_files="t.parquet", checkpoint_dir="c")
    for verl, match in [
        ({"algorithm": "ppo"}, "train.verl.algorithm"),
        ({"learning_rate": 1e-6}, "unknown key"),
        ({"save_contents": ["optimizer"]}, "train.verl.save_contents"),
        ({"rollout_n": 0}, "train.verl.rollout_n"),
        ({"ppo_mini_batch_size": 256}, "ppo_mini_batch_size"),
        ({"algorithm": "dapo", "overlong_buffer_len": 5000}, "overlong_buffer_len"),
        ({"attention": "flash"}, "train.verl.attention"),
        ({"max_num_gen_batches": 10}, "train.verl.max_num_gen_batches"),
    ]:
        with pytest.raises(VerlConfigError, match=match):
            compose_overrides({**base, "train": {**base["train"], "verl": verl}}, **paths)


def test_defaults_and_value_formatting(tmp_path):
    from rlpredict.train.verl_backend import compose_overrides, format_value

    o = compose_overrides(
        {"run": "demo", "seed": 3, "train": {"steps": 5, "save_every": 2, "verl": {}}},
        model_path="Qwen/Qwen2.5-Math-1.5B",  # not a local dir: its own template is used
        train_files=[tmp_path / "a.parquet", tmp_path / "b.parquet"],
        val_files=tmp_path / "v.parquet",
        checkpoint_dir=tmp_path / "ck",
    )
    assert f"data.train_files=[{tmp_path}/a.parquet,{tmp_path}/b.parquet]" in o
    assert "trainer.val_before_train=True" in o and "trainer.test_freq=2" in o
    assert "data.seed=3" in o and "actor_rollout_ref.rollout.seed=3" in o
    assert "actor_rollout_ref.actor.optim.lr=1e-06" in o
    assert "trainer.experiment_name=demo" in o
    assert not any("custom_chat_template" in x for x in o)
    assert format_value("it's {x}") == "'it\\'s {x}'"
    assert format_value([1, "a b"]) == "[1,'a b']"
    assert format_value(None) == "null" and format_value("true") == "'true'"


if __name__ == "__main__" and sys.argv[1:2] == ["compose"]:
    compose_in_verl(Path(sys.argv[2]), Path(sys.argv[3]))
