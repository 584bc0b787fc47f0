"""The paper-scale rules run for real through Snakemake on a CPU (no conda: the scripts run
in this environment).

- A run trained elsewhere (train.backend existing): a verl checkpoint dir holding the fp32 HF
  weights verl writes with ``hf_model`` in save_contents, and a local bf16 base model, become
  fp32 base/ and checkpoints/step_N; the ΔW spectrum rule then runs on them unchanged.
- verl training itself: see test_verl_rule.py.
"""

from __future__ import annotations

import pandas as pd
import torch
import yaml
from conftest import copy_workflow, run_snakemake

from rlpredict.checkpoints import ModelReader
from rlpredict.model import build_model, build_tokenizer, save_model_dir
from rlpredict.train.verl_run import CONSOLE_LOG

SIZES = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_layers": 1,
    "num_heads": 2,
    "num_kv_heads": 1,
    "max_positions": 32,
}


def save_tiny(out, seed: int, dtype=torch.float32):
    tokenizer = build_tokenizer()
    model = build_model(tokenizer, SIZES, seed=seed)
    save_model_dir(model, tokenizer, out)
    if dtype != torch.float32:
        model.to(dtype).save_pretrained(out, safe_serialization=True)
    return out


def test_existing_verl_run_becomes_checkpoints_and_spectra(tmp_path):
    workdir = copy_workflow(tmp_path)
    elsewhere = workdir / "elsewhere"
    base = save_tiny(elsewhere / "base", seed=0, dtype=torch.bfloat16)
    verl_dir = elsewhere / "verl_run"
    for step in (10, 20):
        save_tiny(verl_dir / f"global_step_{step}" / "actor" / "huggingface", seed=step)
    (verl_dir / "latest_checkpointed_iteration.txt").write_text("20")
    (verl_dir / CONSOLE_LOG).write_text(
        "(TaskRunner pid=1) step:10 - critic/score/mean:0.25\n"
        "(TaskRunner pid=1) step:20 - critic/score/mean:0.5\n"
    )
    config = {
        "run": "existing_cpu",
        "model": {"source": "local", "path": "elsewhere/base"},
        "train": {
            "backend": "existing",
            # the lr time axis needs the schedule this run was trained with
            "existing": {"verl_dir": "elsewhere/verl_run", "lr_schedule": "constant"},
        },
        "control": {"sft": {"enabled": False}},
        # windows holding a checkpoint of this run (10, 20): an empty one is an error
        "extrapolate": {
            "windows": [0.5],
            "methods": ["two-point", "lstsq-free", "lstsq-anchored", "expo", "relex"],
        },
        "linearity": {"enabled": False},
    }
    (workdir / "existing.yaml").write_text(yaml.safe_dump(config))
    out = workdir / "results" / "existing_cpu"
    targets = [
        "results/existing_cpu/checkpoints/step_20",
        "results/existing_cpu/analysis/train_history.csv",
        "results/existing_cpu/analysis/spectrum/rl/step_20.parquet",
    ]
    result = run_snakemake(workdir, *targets, "--cores", "2", "--configfile", "existing.yaml")
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert "rule train_rl:" in result.stderr and "export_verl_data" not in result.stderr

    source = verl_dir / "global_step_20" / "actor" / "huggingface"
    with ModelReader(source) as a, ModelReader(out / "checkpoints" / "step_20") as b:
        assert a.names() == b.names()
        assert all(torch.equal(a.get(n), b.get(n)) for n in a.names())
    with ModelReader(base) as a, ModelReader(out / "base") as b:
        name = a.names()[0]
        assert a.dtype(name) == torch.bfloat16 and b.dtype(name) == torch.float32
        assert torch.equal(a.get(name), b.get(name))
    history = pd.read_csv(out / "analysis" / "train_history.csv")
    assert history["step"].tolist() == [10, 20] and history["reward"].tolist() == [0.25, 0.5]
    spectrum = pd.read_parquet(out / "analysis" / "spectrum" / "rl" / "step_20.parquet")
    assert len(spectrum) > 0
