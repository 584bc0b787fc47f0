"""Periodic re-grounding (RL-Extra): the segment plan and the known answer on linear weights."""

import pytest
import torch
from safetensors.torch import load_file
from tiny_models import save_state, tiny_model

from rlpredict.extrapolate import extrapolate_weights, is_norm, two_point
from rlpredict.regrounding import (
    chain_name,
    chain_real_steps,
    parse_chain,
    plan_chain,
    real_steps_to_virtual,
    run_chain,
)


def test_segments_follow_the_authors_loop():
    """run_rl_extrapolation.sh: RL from virtual step c to c + M, extrapolate to c + M + N,
    the next RL starts at c + M + N."""
    chain = plan_chain(20, 100, segments=3)
    assert [(s.real_start, s.real_end) for s in chain] == [(0, 20), (20, 40), (40, 60)]
    assert [(s.virtual_start, s.virtual_end, s.virtual_target) for s in chain] == [
        (0, 20, 120),
        (120, 140, 240),
        (240, 260, 360),
    ]
    assert all(s.alpha == pytest.approx(6.0) for s in chain)
    assert [s.index for s in chain] == [1, 2, 3]


def test_budget_gives_whole_segments():
    assert len(plan_chain(300, 300, budget=1200)) == 4
    assert len(plan_chain(300, 300, budget=1000)) == 3
    assert chain_real_steps(plan_chain(300, 300, budget=1000)) == 900


def test_lr_schedule_restarts_by_default_and_continues_on_request():
    restarted = plan_chain(40, 120, segments=3)
    continued = plan_chain(40, 120, segments=3, lr_mode="continue")
    assert [s.lr_steps for s in restarted] == [(0, 40)] * 3
    assert [s.lr_steps for s in continued] == [(0, 40), (40, 80), (80, 120)]


def test_optimizer_state_is_reset_by_default():
    assert not any(s.keeps_optimizer for s in plan_chain(10, 10, segments=3))
    kept = plan_chain(10, 10, segments=3, optimizer="keep")
    assert [s.keeps_optimizer for s in kept] == [False, True, True]  # segment 1: fresh run


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"segments": 2, "budget": 40}, "regrounding"),
        ({}, "regrounding"),
        ({"budget": 10}, "regrounding.budget"),
        ({"segments": 0}, "regrounding.segments"),
        ({"segments": 2, "lr_mode": "cosine"}, "regrounding.lr_schedule"),
        ({"segments": 2, "optimizer": "sgd"}, "regrounding.optimizer"),
    ],
)
def test_bad_settings_name_their_key(kwargs, key):
    with pytest.raises(ValueError, match=rf"^{key}[ :]"):
        plan_chain(20, 100, **kwargs)


def test_chain_names_key_the_pair():
    assert chain_name(20, 100) == "m20_n100"
    assert parse_chain("m20_n100") == (20, 100)
    assert chain_name(20, 100) != chain_name(100, 20)
    with pytest.raises(ValueError, match="m20-n100"):
        parse_chain("m20-n100")


@pytest.mark.parametrize(("m", "n"), [(20, 100), (100, 100), (300, 300), (5, 0)])
def test_linear_weights_reach_the_target_in_m_over_m_plus_n_of_the_steps(m, n):
    """Known answer: a trainer whose weights move by exactly ``velocity`` per real step. The
    chain's k-th extrapolated model equals standard RL's weights at step k (M + N), reached
    after k M real steps: the target weights in M / (M + N) of the real steps."""
    torch.manual_seed(0)
    w0 = torch.randn(64, 32, dtype=torch.float64)
    velocity = torch.randn(64, 32, dtype=torch.float64) * 1e-3
    real_steps = []

    def train(start, segment):
        real_steps.append(segment.m)
        return start + segment.m * velocity

    target_step = 1200
    chain = plan_chain(m, n, budget=round(real_steps_to_virtual(target_step, m, n)))
    result = run_chain(w0, chain, train, lambda a, b, alpha: two_point(a, b, alpha))
    segment, end, extrapolated = result[-1]
    assert segment.virtual_target == target_step
    torch.testing.assert_close(extrapolated, w0 + target_step * velocity)
    torch.testing.assert_close(end, w0 + segment.virtual_end * velocity)
    assert sum(real_steps) == target_step * m // (m + n)


def test_chain_on_model_dirs_reaches_the_linear_target(tmp_path):
    """The same known answer through the workflow's extrapolation (two-point on HF dirs with
    the segment's start at t0 and end at t1): every non-norm tensor after 3 segments of
    (M, N) = (4, 12) equals W0 + 48·v; norms are copied from the last segment end."""
    model = tiny_model()
    model.save_pretrained(tmp_path / "base")
    w0 = load_file(tmp_path / "base" / "model.safetensors")
    torch.manual_seed(1)
    velocity = {k: torch.randn_like(v) * 1e-3 for k, v in w0.items()}

    def train(start_dir, segment):
        start = load_file(start_dir / "model.safetensors")
        end = {k: v + segment.m * velocity[k] for k, v in start.items()}
        return save_state(tmp_path / f"seg{segment.index}" / "end", tmp_path / "base", end)

    def extrapolate(start_dir, end_dir, alpha):
        segment = next(s for s in chain if end_dir.parent.name == f"seg{s.index}")
        return extrapolate_weights(
            "two-point",
            {segment.virtual_start: start_dir, segment.virtual_end: end_dir},
            segment.virtual_target,
            end_dir.parent / "extrap",
            progress=False,
        )

    chain = plan_chain(4, 12, segments=3)
    final = run_chain(tmp_path / "base", chain, train, extrapolate)[-1][2]
    got = load_file(final / "model.safetensors")
    last_end = load_file(tmp_path / "seg3" / "end" / "model.safetensors")
    for name, weight in got.items():
        expected = last_end[name] if is_norm(name) else w0[name] + 48 * velocity[name]
        torch.testing.assert_close(weight, expected, rtol=1e-5, atol=1e-5)
