"""verl 0.9.1 reads what the workflow sets: attention and remove-padding, gradient clipping,
DAPO's generation bound, Ray's CPUs; every GPU job asks SLURM for one node; the training
history says what its ``reward`` is.

The overrides go through verl's own Hydra config and dataclasses in the separate verl
environment (``make verl-env``): run as a script (``python tests/test_verl_paper_defects.py
compose SPECS OUT``) there, this file composes each spec and writes the values verl reads.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import REPO, copy_workflow, verl_python

PAPER = REPO / "config" / "paper"
PROFILE = REPO / "profiles" / "slurm"


# ---------------------------------------------------------------------------------------
# Composition side: runs in the verl environment.


def read_in_verl(specs_file: Path, out_file: Path) -> None:
    """Compose every spec with verl's config, validate it as ``main_ppo`` does, build the
    dataclasses verl's workers read, and write the values this file checks."""
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf
    from verl.trainer.config import FilterGroupsConfig
    from verl.trainer.ppo.utils import need_critic, need_reference_policy
    from verl.utils.config import omega_conf_to_dataclass, validate_config

    found = {}
    for name, overrides in json.loads(specs_file.read_text()).items():
        with initialize_config_module("verl.trainer.config", version_base=None):
            config = compose("ppo_trainer", overrides=overrides)
        GlobalHydra.instance().clear()
        validate_config(config, need_reference_policy(config), need_critic(config))
        model = config.actor_rollout_ref.model
        actor = omega_conf_to_dataclass(config.actor_rollout_ref.actor)
        groups = OmegaConf.to_container(config.algorithm.filter_groups, resolve=True)
        groups.pop("_target_")
        filter_groups = FilterGroupsConfig(**groups)
        found[name] = {
            "attn_implementation": model.override_config.get("attn_implementation"),
            "model_use_remove_padding": model.use_remove_padding,
            "actor_use_remove_padding": actor.use_remove_padding,
            "clip_grad": actor.optim.clip_grad,
            "filter_groups_enable": filter_groups.enable,
            "max_inflight_gen_batches": filter_groups.max_inflight_gen_batches,
            "max_num_gen_batches": filter_groups.max_num_gen_batches,
            "ray_num_cpus": config.ray_kwargs.ray_init.num_cpus,
        }
    out_file.write_text(json.dumps(found))


# ---------------------------------------------------------------------------------------
# Tests: run in the project environment.


def paper(name: str) -> dict:
    return yaml.safe_load((PAPER / f"{name}.yaml").read_text())


def with_verl(config: dict, **verl) -> dict:
    train = config["train"]
    return {**config, "train": {**train, "verl": {**train.get("verl", {}), **verl}}}


def overrides_of(config: dict, tmp_path: Path, ray_cpus: int | None = None) -> list[str]:
    from rlpredict.train.verl_backend import compose_overrides

    return compose_overrides(
        config,
        model_path=config["model"]["path"],
        train_files=tmp_path / "train.parquet",
        checkpoint_dir=tmp_path / "verl",
        ray_cpus=ray_cpus,
    )


def read_with_verl(specs: dict[str, list[str]], tmp_path: Path) -> dict[str, dict]:
    (tmp_path / "specs.json").write_text(json.dumps(specs))
    out = tmp_path / "read.json"
    result = subprocess.run(
        [str(verl_python()), __file__, "compose", str(tmp_path / "specs.json"), str(out)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads(out.read_text())


def test_verl_reads_attention_clipping_generation_bound_and_ray_cpus(tmp_path):
    grpo = paper("single_gpu_qwen2p5_math_1p5b")
    dapo = paper("alpharl_qwen3_8b_dapo")
    specs = {
        "default": overrides_of(grpo, tmp_path, ray_cpus=8),
        "flash": overrides_of(with_verl(grpo, attention="flash_attention_2"), tmp_path),
        "sdpa": overrides_of(with_verl(grpo, attention="sdpa", grad_clip=0.5), tmp_path),
        "dapo": overrides_of(with_verl(dapo, max_inflight_gen_batches=2), tmp_path, 64),
    }
    read = read_with_verl(specs, tmp_path)
    # sdpa by default, and then no packing of sequences into one row
    for name in ("default", "sdpa", "dapo"):
        assert read[name]["attn_implementation"] == "sdpa", name
        assert read[name]["model_use_remove_padding"] is False, name
        assert read[name]["actor_use_remove_padding"] is False, name
    assert read["flash"]["attn_implementation"] == "flash_attention_2"
    assert read["flash"]["model_use_remove_padding"] is True
    assert read["flash"]["actor_use_remove_padding"] is True
    # train.verl.grad_clip reaches the optimizer config the FSDP engine clips with
    assert read["default"]["clip_grad"] == 1.0 and read["sdpa"]["clip_grad"] == 0.5
    assert not any("actor.grad_clip" in o for o in specs["sdpa"])
    # DAPO: verl 0.9.1's bound on generation, not the key its trainer ignores
    assert read["dapo"]["filter_groups_enable"] is True
    assert read["dapo"]["max_inflight_gen_batches"] == 2
    assert read["dapo"]["max_num_gen_batches"] == 0  # verl's default, never set
    assert not any("max_num_gen_batches" in o for name in specs for o in specs[name])
    # Ray's CPUs from the job's allocation; null (Ray counts the node) only when not given
    assert read["default"]["ray_num_cpus"] == 8 and read["dapo"]["ray_num_cpus"] == 64
    assert read["flash"]["ray_num_cpus"] is None


def test_attention_and_removed_keys_are_checked():
    from rlpredict.train.verl_backend import VerlConfigError, verl_settings

    assert verl_settings({})["attention"] == "sdpa"
    with pytest.raises(VerlConfigError, match="train.verl.attention"):
        verl_settings({"verl": {"attention": "eager"}})
    with pytest.raises(VerlConfigError, match="max_num_gen_batches: .*max_inflight_gen_batches"):
        verl_settings({"verl": {"max_num_gen_batches": 10}})
    with pytest.raises(VerlConfigError, match="max_inflight_gen_batches"):
        verl_settings({"verl": {"max_inflight_gen_batches": 0}})


def test_ray_cpus_come_from_the_job_allocation(caplog):
    from rlpredict.train.verl_backend import ray_num_cpus

    assert ray_num_cpus(64, 8, {}) == 64  # the rule's threads outside SLURM
    assert ray_num_cpus(64, 8, {"SLURM_CPUS_ON_NODE": "48"}) == 48  # the step's CPUs
    assert ray_num_cpus(8, 1, {"SLURM_CPUS_ON_NODE": ""}) == 8
    with caplog.at_level(logging.WARNING):
        # verl reserves 3 CPUs per GPU and needs one more free: fewer would never schedule
        assert ray_num_cpus(2, 1, {}) == 4
        assert ray_num_cpus(64, 8, {"SLURM_CPUS_ON_NODE": "16"}) == 25
    assert "cpus_per_gpu" in caplog.text


def test_ray_cpus_are_not_part_of_the_run_fingerprint(tmp_path):
    from rlpredict.train.verl_backend import fingerprint

    config = paper("single_gpu_qwen2p5_math_1p5b")
    assert "ray_kwargs.ray_init.num_cpus=8" in overrides_of(config, tmp_path, 8)
    # resuming on a node with another allocation is the same run; another attention is not
    assert fingerprint(overrides_of(config, tmp_path, 8)) == fingerprint(
        overrides_of(config, tmp_path, 16)
    )
    flash = with_verl(config, attention="flash_attention_2")
    assert fingerprint(overrides_of(config, tmp_path)) != fingerprint(overrides_of(flash, tmp_path))


def test_history_says_what_its_reward_is(tmp_path):
    from rlpredict.train.verl_backend import reward_meaning
    from rlpredict.train.verl_run import read_history

    grpo = reward_meaning(paper("single_gpu_qwen2p5_math_1p5b")["train"])
    dapo = reward_meaning(paper("alpharl_qwen3_8b_dapo")["train"])
    assert "all responses" in grpo and "not accuracy" not in grpo
    assert "overlong penalty" in dapo and "kept by dynamic sampling" in dapo
    assert "not accuracy" in dapo
    log = tmp_path / "console.log"
    log.write_text(
        "(TaskRunner pid=1) step:1 - critic/score/mean:-0.25 - "
        "training/filter_groups/evicted_samples:96 - val-core/math/acc/mean@1:0.5\n"
    )
    history = read_history(log, dapo)
    assert list(history.columns[:3]) == ["step", "reward", "reward_metric"]
    assert history["reward"].tolist() == [-0.25]  # a penalised score, below any accuracy
    assert history["reward_metric"].tolist() == [dapo]
    assert history["val-core/math/acc/mean@1"].tolist() == [0.5]
    assert read_history(log)["reward_metric"].tolist() == ["critic/score/mean"]


@pytest.mark.parametrize("name", ["single_gpu_qwen2p5_math_1p5b", "alpharl_qwen3_8b_dapo"])
def test_every_gpu_job_asks_slurm_for_one_node(tmp_path, monkeypatch, name):
    from test_verl_cluster import sbatch_calls

    workdir = copy_workflow(tmp_path)
    monkeypatch.chdir(workdir)
    calls = sbatch_calls(workdir, PROFILE, paper(name))
    gpu_rules = {rule for rule, call in calls.items() if "--gpus" in call}
    assert {"train_rl", "evaluate", "evaluate_logits", "logprob_linearity"} <= gpu_rules
    for rule in gpu_rules:
        assert "--nodes=1" in calls[rule], rule
    assert "--nodes" not in calls["convert_checkpoint"]


def test_regrounding_segments_are_gpu_jobs_on_one_node(tmp_path, monkeypatch):
    from test_verl_cluster import sbatch_calls

    workdir = copy_workflow(tmp_path)
    monkeypatch.chdir(workdir)
    config = paper("rlvr_linearity_r1distill_1p5b")
    calls = sbatch_calls(workdir, PROFILE, config, frozenset({"regrounding"}))
    train = calls["regrounding_train"]
    assert "--gpus=8" in train or "--gres=gpu:8" in train, train
    assert "--nodes=1" in train
    assert "--gpus" not in calls["regrounding_extrapolate"]


if __name__ == "__main__" and sys.argv[1:2] == ["compose"]:
    read_in_verl(Path(sys.argv[2]), Path(sys.argv[3]))
