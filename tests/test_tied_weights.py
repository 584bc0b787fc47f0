"""Tied embeddings stored differently by different files still make one analysable run.

A tied base whose ``model.safetensors`` also stores ``lm_head.weight`` (as some hub models
do) and verl steps whose ``huggingface/`` weights omit it (as ``save_pretrained`` writes tied
models) are converted with ``convert_run``; every step must then hold the same tensors, the
analyses must run over them, and their outputs must load in transformers with tied weights.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from tiny_models import tiny_model

from rlpredict.checkpoints import CheckpointError, ModelReader, check_compatible
from rlpredict.cli import EXIT_BAD_INPUT, main
from rlpredict.train.verl_checkpoints import convert_run

STEPS = (10, 20)
EMBED = "model.embed_tokens.weight"


def stored_names(model_dir: Path) -> set[str]:
    with safe_open(model_dir / "model.safetensors", framework="pt") as f:
        return set(f.keys())


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


@pytest.fixture
def tied_run(tmp_path) -> tuple[Path, Path, dict[str, torch.Tensor]]:
    """(base dir storing lm_head, verl dir of steps 10 and 20, base state without lm_head):
    W(t) = W0 + t·1e-3 for every tensor."""
    model = tiny_model(seed=0)
    assert model.config.tie_word_embeddings
    base = tmp_path / "base"
    model.save_pretrained(base)
    tensors = load_file(base / "model.safetensors")
    assert "lm_head.weight" not in tensors
    state = {k: v.clone() for k, v in tensors.items()}
    tensors["lm_head.weight"] = tensors[EMBED].clone()
    save_file(tensors, base / "model.safetensors", metadata={"format": "pt"})
    verl = tmp_path / "verl"
    for step in STEPS:
        with torch.no_grad():
            for name, p in model.named_parameters():
                p.copy_(state[name] + step * 1e-3)
        model.save_pretrained(verl / f"global_step_{step}" / "actor" / "huggingface")
    (verl / "latest_checkpointed_iteration.txt").write_text(str(STEPS[-1]))
    return base, verl, state


def test_tied_base_and_verl_steps_convert_to_one_layout(tied_run, tmp_path):
    base, verl, state = tied_run
    done = convert_run(verl, tmp_path / "checkpoints", base_model_dir=base)
    assert sorted(done) == [0, *STEPS]
    for step, model_dir in done.items():
        assert stored_names(model_dir) == set(state), step
    with ModelReader(done[0]) as first, ModelReader(done[20]) as last:
        check_compatible(first, last)
        assert torch.equal(first.get(EMBED), state[EMBED])
    # The unconverted base reads the same way as its converted copy.
    with ModelReader(base) as raw, ModelReader(done[0]) as copied:
        assert raw.names() == copied.names()


def test_analyses_run_over_the_converted_tied_run(tied_run, tmp_path):
    from transformers import AutoModelForCausalLM

    base, verl, state = tied_run
    done = convert_run(verl, tmp_path / "checkpoints", base_model_dir=base)
    out = tmp_path / "extrapolated"
    pairs = [f"{s}={d}" for s, d in done.items()]
    argv = ["extrapolate", "weight", *pairs, "--target-step", "100", "--out", str(out)]
    assert main(argv) == 0
    assert stored_names(out) == set(state)
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.config.tie_word_embeddings
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    torch.testing.assert_close(
        model.model.embed_tokens.weight.detach(), state[EMBED] + 0.1, rtol=0, atol=1e-5
    )
    # Spectrum over the converted step and over the raw base storing lm_head alike.
    for base_dir in (done[0], base):
        table = tmp_path / f"spectrum_{base_dir.name}.csv"
        assert main(["spectrum", "--base", str(base_dir), "--checkpoint", str(done[20])]
                    + ["--out", str(table)]) == 0  # fmt: skip
        assert len(pd.read_csv(table)) > 0


def test_tied_base_with_a_different_lm_head_is_refused(tied_run, tmp_path, capsys):
    base, verl, state = tied_run
    tensors = load_file(base / "model.safetensors")
    tensors["lm_head.weight"][0, 0] += 1.0
    save_file(tensors, base / "model.safetensors", metadata={"format": "pt"})
    before = snapshot(base)
    out = tmp_path / "checkpoints"
    with pytest.raises(CheckpointError, match=r"base/model.safetensors: .*'lm_head.weight'"):
        convert_run(verl, out, base_model_dir=base)
    assert not (out / "step_0").exists()
    assert snapshot(base) == before
    table = tmp_path / "spectrum.csv"
    argv = ["spectrum", "--base", str(base), "--checkpoint", str(base), "--out", str(table)]
    assert main(argv) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert f"{base}/model.safetensors: config.json ties 'lm_head.weight'" in err
    assert not table.exists() and snapshot(base) == before


def test_untied_config_keeps_a_stored_lm_head(tied_run, tmp_path):
    base, _, state = tied_run
    config = json.loads((base / "config.json").read_text())
    config["tie_word_embeddings"] = False
    (base / "config.json").write_text(json.dumps(config))
    with ModelReader(base) as reader:
        assert set(reader.names()) == set(state) | {"lm_head.weight"}
