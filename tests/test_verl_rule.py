"""The verl training rule (train.backend verl) run for real through Snakemake on a CPU, with
a stand-in for ``python -m verl.trainer.main_ppo`` (verl itself needs CUDA; its acceptance of
the composed overrides is tested in test_verl_backend.py). The data export of the generated
task runs first; the stand-in saves checkpoint dirs and prints console lines as verl does; the
rule must check the saves, write the history and, when rerun, resume the same run.
"""

from __future__ import annotations

import json

import pandas as pd
import yaml
from conftest import copy_workflow, run_snakemake
from test_paper_rules import save_tiny

from rlpredict.train.verl_run import CONSOLE_LOG

STAND_IN = """
import sys
from pathlib import Path

import torch

args = dict(a.split("=", 1) for a in sys.argv[1:])
assert Path(args["data.train_files"].strip("[]")).is_file()
assert Path(args["actor_rollout_ref.model.path"], "config.json").is_file()
out = Path(args["trainer.default_local_dir"])
total, every = int(args["trainer.total_training_steps"]), int(args["trainer.save_freq"])
print("resume_mode", args["trainer.resume_mode"])
print("ray_num_cpus", args["ray_kwargs.ray_init.num_cpus"])
for step in range(1, total + 1):
    print(f"(TaskRunner pid=7) step:{step} - critic/score/mean:{step / total} - x:np.float64(1)")
    if step % every == 0 or step == total:
        actor = out / f"global_step_{step}" / "actor"
        actor.mkdir(parents=True, exist_ok=True)
        # the files verl 0.9.1 saves (one rank), so that a rerun can resume from them
        for prefix in ("model", "optim", "extra_state"):
            torch.save({"step": step}, actor / f"{prefix}_world_size_1_rank_0.pt")
        torch.save({"step": step}, actor.parent / "data.pt")
        (out / "latest_checkpointed_iteration.txt").write_text(str(step))
"""


def test_verl_training_rule_with_a_stand_in_for_verl(tmp_path, monkeypatch):
    workdir = copy_workflow(tmp_path)
    fake = tmp_path / "stand_in" / "verl" / "trainer"
    fake.mkdir(parents=True)
    for package in (fake.parent, fake):
        (package / "__init__.py").write_text("")
    (fake / "main_ppo.py").write_text(STAND_IN)
    monkeypatch.setenv("PYTHONPATH", str(tmp_path / "stand_in"))
    monkeypatch.delenv("SLURM_CPUS_ON_NODE", raising=False)  # Ray's CPUs: the rule's threads
    save_tiny(workdir / "elsewhere" / "base", seed=0)
    config = {
        "run": "verl_cpu",
        "task": {"train_size": 200, "dev_size": 50, "test_size": 50},
        "model": {"source": "local", "path": "elsewhere/base"},
        "train": {"backend": "verl", "steps": 5, "save_every": 2},
        "data": {"train": "generated", "val": "generated"},
        "control": {"sft": {"enabled": False}},
        "extrapolate": {
            "windows": [0.4, 0.8],
            "methods": ["two-point", "lstsq-free", "lstsq-anchored", "expo", "relex"],
        },
        "linearity": {"enabled": False},
    }
    (workdir / "verl.yaml").write_text(yaml.safe_dump(config))
    targets = ["results/verl_cpu/verl/rlpredict_done.json"]
    result = run_snakemake(workdir, *targets, "--cores", "2", "--configfile", "verl.yaml")
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]

    out = workdir / "results" / "verl_cpu"
    train = pd.read_parquet(out / "data" / "train.parquet")
    val = pd.read_parquet(out / "data" / "val.parquet")
    assert (len(train), len(val)) == (200, 50)
    assert set(train["data_source"]) == {"rlpredict/arithmetic"}
    row = train.iloc[0]
    a, b = row["prompt"][0]["content"].rstrip("=").split("+")
    assert row["reward_model"]["ground_truth"] == str(int(a) + int(b))
    assert set(val["extra_info"].map(lambda x: x["split"])) == {"val"}

    history = pd.read_csv(out / "analysis" / "train_history.csv")
    assert history["step"].tolist() == [1, 2, 3, 4, 5]
    assert history["reward"].tolist() == [0.2, 0.4, 0.6, 0.8, 1.0]
    assert set(history["reward_metric"]) == {
        "critic/score/mean: mean verifier score over all responses of the step"
    }
    done = json.loads((out / "verl" / "rlpredict_done.json").read_text())
    assert done["steps"] == [0, 2, 4, 5]
    assert any(x.startswith("hydra.run.dir=") for x in done["command"])
    console = (out / "verl" / CONSOLE_LOG).read_text()
    assert "resume_mode disable" in console
    # Ray gets the job's CPUs: the rule's threads capped by --cores 2, raised to the 4 that
    # verl's one GPU worker group needs
    assert "ray_num_cpus 4" in console

    # A rerun of the same config resumes the same run (verl's resume_mode=auto).
    result = run_snakemake(
        workdir, *targets, "--cores", "2", "--configfile", "verl.yaml", "--forcerun", "train_rl"
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    console = (out / "verl" / CONSOLE_LOG).read_text()
    assert console.count("# rlpredict: ") == 2 and "resume_mode auto" in console
