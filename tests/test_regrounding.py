"""Periodic re-grounding (RL-Extra): the segment plan and the known answer on linear weights."""

import math

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file
from tiny_models import save_state, tiny_model

from rlpredict import claims
from rlpredict.extrapolate import is_norm, two_point
from rlpredict.regrounding import (
    chain_curve,
    chain_name,
    chain_real_steps,
    default_targets,
    equal_budget,
    extrapolate_segment,
    parse_chain,
    plan_chain,
    real_steps_to_virtual,
    regrounding_markdown,
    regrounding_table,
    run_chain,
    standard_curve,
    steps_to_targets,
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


def test_prompt_order_restarts_by_default_and_reshuffles_on_request():
    assert [s.data_seed(7) for s in plan_chain(10, 10, segments=3)] == [7, 7, 7]
    reshuffled = plan_chain(10, 10, segments=3, data="reshuffle")
    assert [s.data_seed(7) for s in reshuffled] == [7, 8, 9]


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"segments": 2, "budget": 40}, "regrounding"),
        ({}, "regrounding"),
        ({"budget": 10}, "regrounding.budget"),
        ({"segments": 0}, "regrounding.segments"),
        ({"segments": 2, "lr_mode": "cosine"}, "regrounding.lr_schedule"),
        ({"segments": 2, "optimizer": "sgd"}, "regrounding.optimizer"),
        ({"segments": 2, "data": "random"}, "regrounding.data"),
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


@pytest.mark.parametrize(("m", "n", "virtual"), [(4, 12, 48), (4, 0, 12)])
def test_chain_on_model_dirs_reaches_the_linear_target(tmp_path, m, n, virtual):
    """The same known answer through the workflow's extrapolation (two-point on HF dirs with
    the segment's start at t0 and end at t1): every non-norm tensor after 3 segments of
    (M, N) equals W0 + 3 (M + N) v; norms are copied from the last segment end. N = 0 is
    standard RL cut into segments: each extrapolated model is its segment's end."""
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
        assert alpha == segment.alpha == (m + n) / m
        out = end_dir.parent / "extrap"
        return extrapolate_segment(segment, start_dir, end_dir, out, progress=False)

    chain = plan_chain(m, n, segments=3)
    final = run_chain(tmp_path / "base", chain, train, extrapolate)[-1][2]
    got = load_file(final / "model.safetensors")
    last_end = load_file(tmp_path / "seg3" / "end" / "model.safetensors")
    for name, weight in got.items():
        expected = last_end[name] if is_norm(name) else w0[name] + virtual * velocity[name]
        torch.testing.assert_close(weight, expected, rtol=1e-5, atol=1e-5)


def toy_curves():
    """Standard RL gains 0.1 per 100 steps from 0.2; the (20, 100) chain's extrapolated
    models stand at its virtual steps on that line; its segment ends at theirs."""
    line = {s: (0.2 + 0.001 * s, 0.01) for s in range(0, 601, 100)}
    evaluated = {s: 10.0 for s in line if s > 0}
    standard = pd.DataFrame(standard_curve(line, 600.0, 600, evaluated))
    chain = plan_chain(20, 100, segments=5)
    ends = [(0.2 + 0.001 * s.virtual_end, 0.01) for s in chain]
    extrap = [(0.2 + 0.001 * s.virtual_target, 0.01) for s in chain]
    rows = chain_curve(chain, (0.2, 0.01), ends, extrap, [20.0] * 5, [5.0] * 5, [(3.0, 4.0)] * 5)
    return pd.concat([standard, pd.DataFrame(rows)], ignore_index=True)


def test_steps_to_target_and_speedup_on_a_linear_curve():
    table = steps_to_targets(toy_curves(), [0.8])
    row = table.set_index("series").loc["(M, N) = (20, 100) extrapolated"]
    # 0.8 is standard RL's step 600 and the chain's virtual step 600: real step 100
    assert row["real_steps"] == 100
    assert row["speedup"] == pytest.approx(6.0)
    # 600 s of standard training vs 5 × 20 s training + 5 × 5 s extrapolation
    assert row["seconds"] == pytest.approx(125.0)
    assert row["cost_aware_speedup"] == pytest.approx(600 / 125)
    # with evaluations: 6 standard checkpoints × 10 s; 5 segments × (3 s end + 4 s extrapolated)
    assert row["seconds_with_eval"] == pytest.approx(125.0 + 35.0)
    assert row["cost_aware_speedup_with_eval"] == pytest.approx(660 / 160)
    never = table.set_index("series").loc["(M, N) = (20, 100) segment end"]
    assert math.isnan(never["real_steps"]) and math.isnan(never["speedup"])


def test_unknown_standard_training_time_gives_no_cost_aware_speedup():
    """Standard RL's training seconds unknown (NaN): the cost-aware speedup is NaN, and 1 for
    a target the base already reaches (no training on either side), never infinite."""
    line = {s: (0.2 + 0.001 * s, 0.01) for s in range(0, 601, 100)}
    standard = pd.DataFrame(standard_curve(line, math.nan, 600))
    chain = plan_chain(20, 100, segments=5)
    extrap = [(0.2 + 0.001 * s.virtual_target, 0.01) for s in chain]
    rows = chain_curve(chain, (0.2, 0.01), extrap, extrap, [20.0] * 5, [5.0] * 5)
    curves = pd.concat([standard, pd.DataFrame(rows)], ignore_index=True)
    table = steps_to_targets(curves, [0.2, 0.8]).set_index(["series", "target"])
    at_base = table.loc[("(M, N) = (20, 100) extrapolated", 0.2)]
    assert at_base["speedup"] == 1.0 and at_base["cost_aware_speedup"] == 1.0
    later = table.loc[("(M, N) = (20, 100) extrapolated", 0.8)]
    assert later["speedup"] == pytest.approx(6.0)
    assert math.isnan(later["cost_aware_speedup"])


def test_equal_budget_compares_at_shared_real_steps():
    table = equal_budget(toy_curves())
    extrap = table[table["series"] == "(M, N) = (20, 100) extrapolated"]
    assert extrap["budget"].tolist() == [100]  # the chain's steps 20..100 ∩ standard's 0..600
    assert extrap["difference"].iloc[0] == pytest.approx(0.6 - 0.1)
    assert extrap["difference_stderr"].iloc[0] == pytest.approx(math.hypot(0.01, 0.01))


def test_default_targets_split_standard_rls_gain():
    assert default_targets(0.2, 0.6) == pytest.approx([0.4, 0.5, 0.56, 0.6])
    assert default_targets(0.3, 0.25) == [0.3]  # no gain: one target, the base's accuracy


def test_long_table_and_markdown_hold_all_three_parts():
    table = regrounding_table(toy_curves(), [0.5, 0.8])
    assert set(table["table"]) == {"curve", "steps_to_target", "equal_budget"}
    md = regrounding_markdown(table)
    assert md.count("## ") == 3 and "6" in md


def test_claim_c9_reads_the_speedup_at_the_highest_target_standard_rl_reaches(tmp_path):
    path = tmp_path / "regrounding.csv"
    regrounding_table(toy_curves(), [0.5, 0.8]).to_csv(path, index=False)
    outcome = claims.check_regrounding({"regrounding": path})
    assert outcome.value == pytest.approx(6.0)
    assert outcome.verdict == "holds"
    assert "(M, N) = (20, 100)" in outcome.this_run and "0.800" in outcome.this_run


def test_claim_c9_fails_when_no_chain_reaches_the_target(tmp_path):
    curves = toy_curves()
    curves = curves[curves["point"] != "extrapolated"]  # segment ends stop below 0.8
    path = tmp_path / "regrounding.csv"
    table = regrounding_table(curves, [0.8])
    table.loc[table["series"].str.endswith("segment end"), "series"] = (
        "(M, N) = (20, 100) extrapolated"
    )
    table.to_csv(path, index=False)
    outcome = claims.check_regrounding({"regrounding": path})
    assert outcome.value == 0.0 and outcome.verdict == "fails"


def test_claim_c9_counts_a_chains_segment_ends_too(tmp_path):
    """The authors validate the model each segment starts from and ends with: a chain whose
    segment end reaches the target first is credited with that end's real steps."""
    curves = toy_curves()
    ends = curves["point"] == "segment end"
    curves.loc[ends & (curves["real_step"] == 60), "accuracy"] = 0.85  # end of segment 3
    path = tmp_path / "regrounding.csv"
    regrounding_table(curves, [0.8]).to_csv(path, index=False)
    outcome = claims.check_regrounding({"regrounding": path})
    assert outcome.value == pytest.approx(10.0)  # 600 standard steps / 60
    assert "(M, N) = (20, 100) segment end" in outcome.this_run


def test_claim_c9_is_not_run_when_standard_rl_gains_nothing(tmp_path):
    curves = toy_curves().assign(accuracy=0.0)
    path = tmp_path / "regrounding.csv"
    regrounding_table(curves, [0.0]).to_csv(path, index=False)
    outcome = claims.check_regrounding({"regrounding": path})
    assert outcome.verdict == "not run" and "does not improve" in outcome.rule


def test_claim_c9_is_not_run_when_switched_off():
    outcome = claims.check_regrounding({"regrounding": None})
    assert outcome.verdict == "not run" and "regrounding.enabled" in outcome.rule


def test_figure_says_which_accuracy_and_marks_the_targets_once():
    from matplotlib.colors import to_hex

    from rlpredict.figures import accuracy_label, regrounding

    table = regrounding_table(toy_curves(), [0.5, 0.8])
    sampled = accuracy_label({"temperature": 1.0, "repeats": 4, "accuracy": "sampled"})
    ax = regrounding(table, "toy", sampled).axes[0]
    assert ax.get_ylabel() == "test accuracy, avg@4 at T = 1"
    handles, labels = ax.get_legend_handles_labels()
    assert labels.count("target accuracies (steps to target)") == 1
    colour = {
        label: to_hex(h.lines[0].get_color())
        for h, label in zip(handles, labels, strict=True)
        if hasattr(h, "lines")
    }
    chain = [c for label, c in colour.items() if label.startswith("(M, N) = (20, 100)")]
    assert len(chain) == 2 and chain[0] == chain[1] != colour["standard RL"]
    greedy = accuracy_label({"temperature": 0.0, "repeats": 1, "accuracy": "sampled"})
    assert greedy == "exact-match accuracy (greedy)"
