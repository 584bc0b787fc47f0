"""Resuming a real (tiny) TRL GRPO run: a checkpoint cut short while it was being saved is
skipped for the newest complete one, and training time is counted over every attempt."""

import json
import logging
import shutil

import pandas as pd
import pytest
from safetensors.torch import load_file, save_file
from tiny_models import save_toy_base, toy_train_rows, trl_settings
from transformers import TrainerState

from rlpredict.tables import training_seconds
from rlpredict.train.trl_backend import (
    TRAINER_STATE,
    checkpoint_problem,
    export_checkpoints,
    train_grpo,
)

SETTINGS = trl_settings()


class Killed(Exception):
    """Stands for the process being killed."""


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return save_toy_base(tmp_path_factory.mktemp("base") / "base")


@pytest.fixture(scope="module")
def rows():
    return toy_train_rows()


@pytest.fixture(scope="module")
def complete(tmp_path_factory, base, rows):
    state_dir = tmp_path_factory.mktemp("complete") / "train_state"
    train_grpo(base, rows, state_dir, {**SETTINGS, "steps": 2}, seed=0)
    ckpt = state_dir / "checkpoint-2"
    assert checkpoint_problem(ckpt) is None
    return ckpt


def kill_while_saving(monkeypatch, step):
    """Kill the run at ``step`` after optimizer.pt and rng_state.pth are written, before
    trainer_state.json (the last file of a checkpoint)."""
    real = TrainerState.save_to_json

    def save_to_json(self, path):
        if self.global_step == step and path.endswith(TRAINER_STATE):
            raise Killed(path)
        return real(self, path)

    monkeypatch.setattr(TrainerState, "save_to_json", save_to_json)


def test_resume_skips_a_checkpoint_cut_short_and_finishes(
    tmp_path, base, rows, monkeypatch, caplog
):
    state_dir = tmp_path / "train_state"
    with monkeypatch.context() as patch:
        kill_while_saving(patch, step=4)
        with pytest.raises(Killed):
            train_grpo(base, rows, state_dir, SETTINGS, seed=0)
    cut = state_dir / "checkpoint-4"
    assert (cut / "optimizer.pt").exists() and not (cut / TRAINER_STATE).exists()
    assert checkpoint_problem(cut) == f"{TRAINER_STATE} missing or unreadable"
    assert checkpoint_problem(state_dir / "checkpoint-2") is None
    first = json.loads((state_dir / "checkpoint-2" / TRAINER_STATE).read_text())
    seconds_at_2 = first["stateful_callbacks"]["TrainingClock"]["args"]["seconds"]
    assert seconds_at_2 > 0

    with caplog.at_level(logging.WARNING, logger="rlpredict.train.trl_backend"):
        history = train_grpo(base, rows, state_dir, SETTINGS, seed=0)
    assert "checkpoint-4" in caplog.text and TRAINER_STATE in caplog.text
    final = json.loads((state_dir / "checkpoint-4" / TRAINER_STATE).read_text())
    assert final["global_step"] == 4
    assert checkpoint_problem(state_dir / "checkpoint-4") is None
    exported = export_checkpoints(state_dir, base, tmp_path / "checkpoints", [0, 2, 4])
    assert (exported[4] / "model.safetensors").is_file()

    # The time counts the first attempt up to checkpoint-2 and the whole second attempt.
    table = pd.DataFrame([row for row in history if "reward" in row])
    assert list(table["step"]) == [1, 2, 3, 4]
    assert list(table["train_attempts"]) == [1, 1, 2, 2]
    assert table["train_seconds"].is_monotonic_increasing
    assert table["train_seconds"].iloc[2] > seconds_at_2
    seconds, source = training_seconds(table, final_step=4)
    assert seconds == pytest.approx(table["train_seconds"].iloc[-1])
    assert "2 attempts" in source


def test_a_start_model_rewritten_since_the_interruption_starts_over(
    tmp_path, base, rows, monkeypatch, caplog
):
    """The same path, new weights (its upstream job ran again): the saved state is another
    run's, so training starts over instead of resuming from it."""
    start = shutil.copytree(base, tmp_path / "start")
    state_dir = tmp_path / "train_state"
    with monkeypatch.context() as patch:
        kill_while_saving(patch, step=4)
        with pytest.raises(Killed):
            train_grpo(start, rows, state_dir, SETTINGS, seed=0)
    assert checkpoint_problem(state_dir / "checkpoint-2") is None
    weights = load_file(start / "model.safetensors")
    new = {k: v + 1e-3 for k, v in weights.items()}
    save_file(new, start / "model.safetensors", metadata={"format": "pt"})

    with caplog.at_level(logging.WARNING, logger="rlpredict.train.trl_backend"):
        history = train_grpo(start, rows, state_dir, SETTINGS, seed=0)
    assert "holds another run's state; starting over" in caplog.text
    table = pd.DataFrame([row for row in history if "reward" in row])
    assert list(table["step"]) == [1, 2, 3, 4]
    assert list(table["train_attempts"]) == [1, 1, 1, 1]


@pytest.mark.parametrize(
    ("damage", "problem"),
    [
        (lambda d: (d / "optimizer.pt").unlink(), "optimizer.pt missing or truncated"),
        (lambda d: (d / "scheduler.pt").write_bytes(b"cut"), "scheduler.pt missing or truncated"),
        (lambda d: (d / "rng_state.pth").unlink(), "rng_state*.pth missing or truncated"),
        (lambda d: (d / TRAINER_STATE).write_text('{"global_'), f"{TRAINER_STATE} missing"),
        (
            lambda d: (d / "model.safetensors").write_bytes(
                (d / "model.safetensors").read_bytes()[:-64]
            ),
            "model.safetensors missing or truncated",
        ),
    ],
)
def test_each_file_trainer_resumes_from_is_required(tmp_path, complete, damage, problem):
    damaged = tmp_path / "damaged"
    shutil.copytree(complete, damaged)
    damage(damaged)
    assert checkpoint_problem(damaged).startswith(problem)


def test_export_copies_a_sharded_base_whole_and_never_onto_its_source(tmp_path):
    from rlpredict.checkpoints import ModelReader, ModelWriter

    base = save_toy_base(tmp_path / "base")
    sharded = tmp_path / "run" / "step_0"
    with ModelReader(base) as reader, ModelWriter(sharded, base, max_shard_bytes=4096) as w:
        for name in reader.names():
            w.add(name, reader.get(name))
        w.finish()
    assert len(list(sharded.glob("model-*-of-*.safetensors"))) > 1
    state = tmp_path / "state"
    state.mkdir()
    out = export_checkpoints(state, sharded, tmp_path / "checkpoints", [0])
    with ModelReader(sharded) as a, ModelReader(out[0]) as b:
        assert a.names() == b.names()
        assert all(a.get(n).equal(b.get(n)) for n in a.names())
    before = sorted((p.name, p.stat().st_size) for p in sharded.iterdir())
    with pytest.raises(ValueError, match="step_0"):
        export_checkpoints(state, sharded, tmp_path / "run", [0])  # step_0 is the source
    assert sorted((p.name, p.stat().st_size) for p in sharded.iterdir()) == before
