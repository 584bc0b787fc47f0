"""A re-grounding segment trained with TRL from a given HF dir: the lr schedule restarted or
continued over the chain's real steps, and the optimizer state reset or kept."""

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file
from tiny_models import save_toy_base, toy_train_rows, trl_settings
from torch.optim.lr_scheduler import LambdaLR

from rlpredict.regrounding import plan_chain
from rlpredict.schedules import trl_lr_schedule
from rlpredict.train.trl_backend import (
    SegmentSchedule,
    StartOptimizerState,
    export_segment,
    train_grpo,
)

SETTINGS = trl_settings(steps=3, save_every=3, lr_schedule="linear")


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return save_toy_base(tmp_path_factory.mktemp("base") / "base")


@pytest.fixture(scope="module")
def rows():
    return toy_train_rows()


def logged_lrs(history):
    return [row["learning_rate"] for row in history if "learning_rate" in row]


def segment_run(tmp_path, start, rows, segment, total, optimizer_state=None):
    schedule = trl_lr_schedule(SETTINGS, segment.m if segment.lr_mode == "restart" else total)
    state = tmp_path / f"state{segment.index}"
    history = train_grpo(
        start,
        rows,
        state,
        {**SETTINGS, "steps": segment.m},
        seed=0,
        lr_schedule=schedule,
        lr_offset=segment.lr_steps[0],
        optimizer_state=optimizer_state,
    )
    end = export_segment(
        state, segment.m, tmp_path / f"seg{segment.index}", tmp_path / f"opt{segment.index}.pt"
    )
    return history, end, schedule


def test_restarted_schedule_is_trls_own(tmp_path, base, rows):
    """restart: a segment of M steps trains with TRL's schedule over M steps, as a fresh run."""
    segment = plan_chain(3, 3, segments=2)[1]
    own = train_grpo(base, rows, tmp_path / "own", {**SETTINGS, "steps": 3}, seed=0)
    explicit, end, _ = segment_run(tmp_path, base, rows, segment, total=6)
    assert logged_lrs(explicit) == pytest.approx(logged_lrs(own))
    trained = load_file(end / "model.safetensors")
    own_end = load_file(tmp_path / "own" / "checkpoint-3" / "model.safetensors")
    assert all(torch.equal(trained[k], own_end[k]) for k in own_end)


def test_continued_schedule_takes_the_segments_part(tmp_path, base, rows):
    """continue: segment 2 of (M = 3) uses steps 3..5 of one linear decay over 6 real steps."""
    segment = plan_chain(3, 3, segments=2, lr_mode="continue")[1]
    history, _, schedule = segment_run(tmp_path, base, rows, segment, total=6)
    # the lr each of the segment's 3 optimizer steps used, as transformers logs it
    assert logged_lrs(history) == pytest.approx([schedule(s) for s in (3, 4, 5)])
    assert schedule(3) == pytest.approx(5e-4)  # half-way down the chain's decay


def test_optimizer_state_is_reset_or_kept(tmp_path, base, rows):
    first = plan_chain(3, 3, segments=2)[0]
    _, end, _ = segment_run(tmp_path, base, rows, first, total=6)
    kept = plan_chain(3, 3, segments=2, optimizer="keep")[1]
    reset = plan_chain(3, 3, segments=2)[1]
    segment_run(tmp_path / "kept", end, rows, kept, 6, optimizer_state=tmp_path / "opt1.pt")
    segment_run(tmp_path / "reset", end, rows, reset, 6)

    def adam_steps(path):
        state = torch.load(path, weights_only=True)["state"]
        return {int(s["step"]) for s in state.values()}

    assert adam_steps(tmp_path / "opt1.pt") == {3}
    assert adam_steps(tmp_path / "kept" / "opt2.pt") == {6}  # Adam's moments carried over
    assert adam_steps(tmp_path / "reset" / "opt2.pt") == {3}


def test_kept_optimizer_state_takes_only_the_moments(tmp_path):
    """keep: the saved param groups (the lr where the earlier segment ended, 0 after a linear
    decay) are not loaded; the first step's lr stays this segment's schedule's, in either
    order of the two callbacks."""
    param = torch.nn.Parameter(torch.ones(3))
    earlier = torch.optim.AdamW([param], lr=1e-3)
    decay = LambdaLR(earlier, lambda step: 1 - step / 3)
    for _ in range(3):
        param.grad = torch.ones(3)
        earlier.step()
        decay.step()
    assert earlier.param_groups[0]["lr"] == 0.0
    torch.save(earlier.state_dict(), tmp_path / "optimizer.pt")
    schedule = trl_lr_schedule({**SETTINGS, "lr_schedule": "linear"}, 3)
    for order in ("schedule first", "state first"):
        fresh = torch.optim.AdamW([param], lr=1e-3)
        callbacks = [
            SegmentSchedule(schedule, offset=1),
            StartOptimizerState(tmp_path / "optimizer.pt"),
        ]
        scheduler = LambdaLR(fresh, lambda step: 1.0)
        for callback in callbacks if order == "schedule first" else callbacks[::-1]:
            callback.on_train_begin(None, None, None, optimizer=fresh, lr_scheduler=scheduler)
        assert fresh.param_groups[0]["lr"] == pytest.approx(schedule(1)), order
        assert fresh.state[param]["step"] == 3
        torch.testing.assert_close(fresh.state[param]["exp_avg"], earlier.state[param]["exp_avg"])


def test_missing_end_checkpoint_names_the_state_dir(tmp_path):
    (tmp_path / "state").mkdir()
    with pytest.raises(FileNotFoundError, match="checkpoint-5: not written"):
        export_segment(tmp_path / "state", 5, tmp_path / "out", None)
    assert not (tmp_path / "out").exists()


def test_history_rows_carry_training_time(tmp_path, base, rows):
    history, _, _ = segment_run(tmp_path, base, rows, plan_chain(3, 3, segments=1)[0], 3)
    table = pd.DataFrame([row for row in history if "reward" in row])
    assert table["train_seconds"].iloc[-1] > 0
    assert table["step"].iloc[-1] == 3
