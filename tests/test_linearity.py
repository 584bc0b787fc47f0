"""Linearity analyses: R² vs step of sampled weights and of probe-token log-probs."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file, save_file
from scipy.stats import pearsonr
from transformers import Qwen2Config, Qwen2ForCausalLM

from rlpredict.checkpoints import CheckpointError
from rlpredict.linearity import (
    Probe,
    generate_probe_responses,
    load_probes,
    logprob_linearity,
    logprob_r2_table,
    per_tensor_r2,
    r2_vs_step,
    sample_weight_trajectories,
    save_probes,
    token_logprob_trajectories,
    weight_linearity,
)
from rlpredict.model import build_tokenizer


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # tiny models gain nothing from threads, and on a busy machine thread sync dominates
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def polyfit_r2(x, y):
    slope, intercept = np.polyfit(x, y, 1)
    resid = y - (slope * x + intercept)
    return 1 - (resid @ resid) / ((y - y.mean()) @ (y - y.mean()))


def test_r2_vs_step_matches_polyfit_and_pearson_on_random_data():
    rng = np.random.default_rng(0)
    steps = np.sort(rng.uniform(0, 500, size=9))
    values = rng.normal(size=(40, 9)) + rng.normal(size=(40, 1)) * steps / 100
    r2 = r2_vs_step(steps, values)
    assert r2.shape == (40,)
    np.testing.assert_allclose(r2, [polyfit_r2(steps, v) for v in values], rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(r2, [pearsonr(steps, v)[0] ** 2 for v in values], rtol=1e-9)
    np.testing.assert_allclose(r2_vs_step(steps, torch.tensor(values)), r2, rtol=1e-12)
    assert r2_vs_step(steps, values[3]) == pytest.approx(r2[3])


def test_r2_vs_step_is_one_on_lines_and_nan_on_constants():
    steps = np.array([0, 10, 20, 40, 80.0])
    lines = np.array([3.0, -2.0, 1e-6])[:, None] * steps + np.array([1.0, 0.5, -7.0])[:, None]
    np.testing.assert_allclose(r2_vs_step(steps, lines), 1.0, rtol=0, atol=1e-12)
    assert np.isnan(r2_vs_step(steps, np.full(5, 0.25)))
    with pytest.raises(ValueError, match="steps"):
        r2_vs_step(steps, np.zeros((2, 4)))


def write_checkpoint(path, tensors):
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps({"model_type": "toy"}))
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path / "model.safetensors"))


def synthetic_run(root, kind, steps=(0, 10, 20, 30, 40, 50, 60, 70), seed=0):
    """Checkpoints of a toy model whose weights move linearly, as a random walk, or not at all."""
    g = torch.Generator().manual_seed(seed)
    base = {
        "layers.0.mlp.weight": torch.randn(200, 300, generator=g),
        "layers.0.norm.weight": torch.ones(20),
        "layers.0.norm.bias": torch.zeros(20),
        "frozen.weight": torch.randn(30, 30, generator=g),
    }
    drift = {k: torch.randn(v.shape, generator=g) * 1e-3 for k, v in base.items()}
    walk = {k: torch.zeros_like(v) for k, v in base.items()}
    run = {}
    for i, step in enumerate(steps):
        tensors = {}
        for k, v in base.items():
            if k == "frozen.weight":
                tensors[k] = v
            elif kind == "linear":
                tensors[k] = v + step * drift[k]
            else:
                if i:
                    walk[k] += torch.randn(v.shape, generator=g) * 1e-2
                tensors[k] = v + walk[k]
        write_checkpoint(root / f"step_{step}", tensors)
        run[step] = root / f"step_{step}"
    return run


def test_weight_sampling_is_seeded_and_sized(tmp_path):
    run = synthetic_run(tmp_path, "linear", steps=(0, 5, 10))
    steps, traj = sample_weight_trajectories(run, seed=3)
    assert list(steps) == [0, 5, 10]
    assert set(traj) == {"layers.0.mlp.weight", "layers.0.norm.weight", "frozen.weight"}
    assert len(traj["layers.0.mlp.weight"][0]) == 60  # 0.1 % of 60,000
    assert len(traj["frozen.weight"][0]) == 50  # at least 50
    assert len(traj["layers.0.norm.weight"][0]) == 20  # never more than the tensor holds
    idx, vals = traj["layers.0.mlp.weight"]
    assert len(set(idx.tolist())) == len(idx) and vals.shape == (3, 60)
    full = load_file(str(run[10] / "model.safetensors"))["layers.0.mlp.weight"].reshape(-1)
    np.testing.assert_array_equal(vals[2], full[torch.from_numpy(idx)].double().numpy())
    _, again = sample_weight_trajectories(run, seed=3)
    _, other = sample_weight_trajectories(run, seed=4)
    np.testing.assert_array_equal(again["layers.0.mlp.weight"][0], idx)
    assert not np.array_equal(other["layers.0.mlp.weight"][0], idx)


def test_weight_linearity_is_one_on_linear_trajectories_and_lower_on_random_walks(tmp_path):
    table, summary = weight_linearity(synthetic_run(tmp_path / "lin", "linear"))
    assert set(table["tensor"]) == {"layers.0.mlp.weight", "layers.0.norm.weight"}  # frozen: out
    assert summary["n_kept"] == len(table) == 60 + 20
    assert table["r2"].min() > 1 - 1e-6
    assert summary["median_r2"] > 1 - 1e-6 and summary["frac_r2_gt_0.7"] == 1.0
    walk, walk_summary = weight_linearity(synthetic_run(tmp_path / "walk", "walk"))
    assert len(walk) == 80
    assert walk_summary["median_r2"] < 0.8
    assert 0 < walk_summary["frac_r2_gt_0.7"] < 0.6
    heat = per_tensor_r2(walk)
    assert list(heat.columns) == ["tensor", "median_r2", "n", "layer", "module"]
    assert set(heat["module"]) == {"mlp", "norm"} and set(heat["layer"]) == {0}


def test_weight_filters_are_parameters(tmp_path):
    run = synthetic_run(tmp_path, "linear")
    # drift 1e-3 per step x 70 steps: typical moves ~0.07, so a 0.05 threshold drops some
    table, _ = weight_linearity(run, min_change=0.05)
    assert 0 < len(table) < 80 and (table["change"] > 0.05).all()
    # 8 checkpoints hold at most 8 distinct values: 9 asks for all of them to differ
    capped, summary = weight_linearity(run, min_distinct=9)
    assert len(capped) == 80 and summary["min_distinct"] == 8
    with pytest.raises(ValueError, match=r"kept no entry .*min_change=1"):
        weight_linearity(run, min_change=1.0)
    only_mlp, _ = weight_linearity(run, include=r"mlp\.weight$", fraction=1e-2)
    assert len(only_mlp) == 600 and set(only_mlp["tensor"]) == {"layers.0.mlp.weight"}


def test_weight_linearity_drops_quantised_trajectories(tmp_path):
    run = {}
    for i, step in enumerate(range(0, 80, 10)):
        # an entry that steps between two values only (a bf16-like plateau trajectory)
        w = torch.full((100,), 1.0) + (0.01 if i >= 4 else 0.0)
        write_checkpoint(tmp_path / f"step_{step}", {"w.weight": w})
        run[step] = tmp_path / f"step_{step}"
    with pytest.raises(ValueError, match=r"50 entries sampled .* 50 moved .*min_distinct=4"):
        weight_linearity(run)
    table, _ = weight_linearity(run, min_distinct=2)
    assert len(table) == 50 and table["r2"].between(0.5, 0.9).all()


def test_weight_linearity_defaults_work_at_three_checkpoints(tmp_path):
    """The minimum run (3 checkpoints) with every default: all moving entries are kept."""
    run = synthetic_run(tmp_path, "linear", steps=(0, 10, 20))
    table, summary = weight_linearity(run)
    assert summary["n_checkpoints"] == 3 and summary["min_distinct"] == 3
    _, traj = sample_weight_trajectories(run)
    moving = sum(int((np.ptp(vals, axis=0) > 1e-4).sum()) for _, vals in traj.values())
    assert summary["n_kept"] == len(table) == moving > 70  # every moving entry of 60 + 20
    assert summary["median_r2"] == pytest.approx(1.0) and summary["frac_r2_gt_0.7"] == 1.0


def test_weight_linearity_keeping_nothing_names_checkpoints_and_filters(tmp_path):
    run = synthetic_run(tmp_path, "linear", steps=(0, 10, 20))
    with pytest.raises(ValueError) as err:
        weight_linearity(run, min_change=0.5)
    message = str(err.value)
    for needle in ("kept no entry", "0=", "step_10", "step_20", "min_change=0.5", "0 moved"):
        assert needle in message, (needle, message)


def test_weight_linearity_stops_on_mismatched_or_too_few_checkpoints(tmp_path):
    run = synthetic_run(tmp_path / "a", "linear", steps=(0, 10, 20))
    write_checkpoint(tmp_path / "odd", {"layers.0.mlp.weight": torch.zeros(3, 3)})
    with pytest.raises(CheckpointError, match="odd"):
        weight_linearity({**run, 30: tmp_path / "odd"})
    with pytest.raises(ValueError, match="at least 3 checkpoints"):
        weight_linearity({0: run[0], 10: run[10]})


def test_logprob_r2_table_on_synthetic_trajectories():
    steps = np.array([0, 10, 20, 30, 40, 50])
    rng = np.random.default_rng(0)
    tokens = {"probe": np.zeros(3, int), "position": np.arange(3), "token_id": [5, 6, 7]}
    tokens = pd.DataFrame(tokens)
    linear = np.stack([-2 + 0.02 * steps, -1 - 0.001 * steps, -3 + 0.01 * steps], axis=1)
    table = logprob_r2_table(steps, linear, tokens)
    assert table["position"].tolist() == [0, 2]  # token 1 moves by only 0.05
    np.testing.assert_allclose(table["r2"], 1.0, atol=1e-12)
    np.testing.assert_allclose(table["change"], [1.0, 0.5])
    walks = np.cumsum(rng.normal(size=(6, 500)), axis=0)
    many = pd.DataFrame({"probe": 0, "position": np.arange(500), "token_id": 0})
    walk_table = logprob_r2_table(steps, walks, many)
    assert walk_table["r2"].median() < 0.8


def build_model(seed: int, vocab_size: int) -> Qwen2ForCausalLM:
    torch.manual_seed(seed)
    config = Qwen2Config(
        vocab_size=vocab_size,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=128,
        max_position_embeddings=128,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=None,
        tie_word_embeddings=True,
        initializer_range=0.3,
    )
    return Qwen2ForCausalLM(config).eval()


@pytest.fixture(scope="module")
def model_run(tmp_path_factory):
    """Four checkpoints on the straight line between two random models."""
    root = tmp_path_factory.mktemp("lprun")
    tok = build_tokenizer()
    start, end = build_model(0, len(tok)), build_model(1, len(tok))
    run = {}
    for step in (0, 10, 20, 30):
        model = build_model(0, len(tok))
        with torch.no_grad():
            for p, a, b in zip(
                model.parameters(), start.parameters(), end.parameters(), strict=True
            ):
                p.copy_(torch.lerp(a, b, step / 30))
        model.save_pretrained(root / f"step_{step}")
        tok.save_pretrained(root / f"step_{step}")
        run[step] = root / f"step_{step}"
    return run, start, tok


def test_probe_responses_are_the_base_models_greedy_outputs(model_run, tmp_path):
    run, base, tok = model_run
    prompts = ["1+2=", "123+456=", "9="]
    probes = generate_probe_responses(run[0], prompts, max_new_tokens=6, batch_size=2)
    assert len(probes) == 3
    for prompt, probe in zip(prompts, probes, strict=True):
        ids = torch.tensor([tok.encode(prompt)])
        ref = base.generate(ids, max_new_tokens=6, do_sample=False, pad_token_id=0, eos_token_id=1)
        assert probe.prompt_ids == tok.encode(prompt)
        assert probe.response_ids == ref[0, ids.shape[1] :].tolist()
    sampled = generate_probe_responses(run[0], prompts, max_new_tokens=6, do_sample=True, seed=1)
    again = generate_probe_responses(run[0], prompts, max_new_tokens=6, do_sample=True, seed=1)
    assert sampled == again
    save_probes(sampled, tmp_path / "probes.jsonl")
    assert load_probes(tmp_path / "probes.jsonl") == sampled


def test_logprob_linearity_teacher_forces_every_checkpoint(model_run):
    run, base, tok = model_run
    probes = [Probe(tok.encode("12+3="), tok.encode("15") + [1]), Probe(tok.encode("7="), [4, 5])]
    steps, logprobs, tokens = token_logprob_trajectories(run, probes, batch_size=2)
    assert list(steps) == [0, 10, 20, 30] and logprobs.shape == (4, 5)
    assert tokens["probe"].tolist() == [0, 0, 0, 1, 1]
    ids = torch.tensor([probes[0].prompt_ids + probes[0].response_ids])
    with torch.no_grad():
        ref = base(ids[:, :-1]).logits.log_softmax(-1)[0, -3:]
    ref = ref.gather(-1, torch.tensor(probes[0].response_ids)[:, None]).squeeze(-1)
    np.testing.assert_allclose(logprobs[0, :3], ref.double().numpy(), rtol=1e-6)
    table, summary = logprob_linearity(run, probes, min_change=0.0)
    assert summary["n_tokens"] == 5 and summary["n_kept"] == len(table) == 5
    np.testing.assert_allclose(table["r2"], r2_vs_step(steps, logprobs.T))
    np.testing.assert_allclose(table["change"], logprobs[-1] - logprobs[0])
    largest = np.abs(logprobs[-1] - logprobs[0]).max()
    with pytest.raises(
        ValueError, match=r"kept no token .*step_30.*min_change=1000 .*largest move"
    ):
        logprob_linearity(run, probes, min_change=1000.0)
    assert largest < 1000.0


def test_save_probes_writes_atomically_and_leaves_nothing_on_error(tmp_path, monkeypatch):
    path = tmp_path / "probes.jsonl"
    probes = [Probe([1, 2], [3]), Probe([4], [5, 6])]
    save_probes(probes, path)
    assert load_probes(path) == probes

    def fail(self, text):
        raise OSError("disk full")

    monkeypatch.setattr("pathlib.Path.write_text", fail)
    with pytest.raises(OSError, match="disk full"):
        save_probes([Probe([7], [8])], path)
    monkeypatch.undo()
    assert load_probes(path) == probes  # the old file is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["probes.jsonl"]


def test_linearity_decodes_without_logits_extrapolation_or_lm_eval():
    script = (
        "import sys, rlpredict.linearity; "
        "print(sorted(m for m in ('rlpredict.logits', 'rlpredict.lm_eval_models', 'lm_eval') "
        "if m in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=300
    )
    assert done.stdout.strip() == "[]"
