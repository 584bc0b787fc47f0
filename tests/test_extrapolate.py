"""Weight extrapolation: per-tensor operators (known answers, properties) and model-level runs on
tiny Qwen2 trajectories W(t) = W_0 + τ(t)·D (+ noise)."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file
from tiny_models import UNTIED_SIZES, save_state
from tiny_models import tiny_config as shared_tiny_config
from transformers import AutoModelForCausalLM, Qwen2Config, Qwen2ForCausalLM

from rlpredict.checkpoints import CheckpointError
from rlpredict.extrapolate import (
    expo,
    extrapolate_weights,
    lr_integral,
    lr_schedule,
    lstsq_coefficients,
    lstsq_extrapolate,
    relex_extrapolate,
    two_point,
    two_point_alpha,
)

WINDOW = [10, 20, 30, 40]
T = 100


def tiny_config(**kw) -> Qwen2Config:
    return shared_tiny_config(**{**UNTIED_SIZES, **kw})


def make_run(root: Path, time_of=float, noise: float = 0.0, seed: int = 0):
    """Checkpoints step_0 (base) and WINDOW of W(t) = W_0 + time_of(t)·D (+ N(0, noise²))."""
    torch.manual_seed(seed)
    base_dir = root / "step_0"
    Qwen2ForCausalLM(tiny_config()).save_pretrained(base_dir)
    w0 = load_file(base_dir / "model.safetensors")
    slope = {k: 1e-3 * torch.randn_like(v) for k, v in w0.items()}

    def at(t: int) -> dict[str, torch.Tensor]:
        tau = time_of(t)
        return {k: (w0[k].double() + tau * slope[k].double()).float() for k in w0}

    run = {0: base_dir}
    for t in WINDOW:
        state = at(t)
        if noise:
            state = {k: v + noise * torch.randn_like(v) for k, v in state.items()}
        run[t] = save_state(root / f"step_{t}", base_dir, state)
    return run, at


def load(model_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(Path(model_dir) / "model.safetensors")


def max_err(out: dict, want: dict, skip_norms: bool = False) -> float:
    return max(
        float((out[k] - want[k]).abs().max()) for k in want if not (skip_norms and "norm" in k)
    )


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("run"))


# ---------------------------------------------------------------------------------------------
# Known answers at model level


@pytest.mark.parametrize(
    "method, fit, window",
    [
        ("two-point", "free", [10, 40]),
        ("two-point", "free", WINDOW),  # earliest and latest are used
        ("lstsq", "free", WINDOW),
        ("lstsq", "anchored", WINDOW),
        ("relex", "free", WINDOW),
        ("relex", "anchored", WINDOW),
    ],
)
def test_linear_trajectory_recovers_final_weights(run, tmp_path, method, fit, window):
    ckpts, at = run
    needs_base = method == "relex" or fit == "anchored"
    selected = {s: ckpts[s] for s in window} | ({0: ckpts[0]} if needs_base else {})
    out = extrapolate_weights(
        method, selected, T, tmp_path / "out", fit=fit, copy_norms=False, progress=False
    )
    want = at(T)
    # fp32 precision: weights are O(1e-1), so ~1e-6 absolute is a few ulps
    assert max_err(load(out), want) < 2e-6
    # and the prediction is not simply the last window checkpoint
    assert max_err(load(ckpts[40]), want) > 1e-2


def test_two_point_copies_norms_from_later_checkpoint_by_default(run, tmp_path):
    ckpts, at = run
    out = load(
        extrapolate_weights(
            "two-point", {10: ckpts[10], 40: ckpts[40]}, T, tmp_path / "o", progress=False
        )
    )
    later, want = load(ckpts[40]), at(T)
    norms = [k for k in want if "norm" in k]
    assert len(norms) == 5
    for k in norms:
        assert torch.equal(out[k], later[k])
    # embeddings and lm_head are extrapolated
    assert max_err(out, want, skip_norms=True) < 2e-6
    assert "lm_head.weight" in out and "model.embed_tokens.weight" in out


def test_expo_from_base(run, tmp_path):
    ckpts, at = run
    # θ₁ = W(40), θ₀ = W(0): α = 1.5 reaches W(100)
    by_alpha = extrapolate_weights(
        "expo", {0: ckpts[0], 40: ckpts[40]}, None, tmp_path / "a", alpha=1.5, progress=False
    )
    by_step = extrapolate_weights(
        "expo", {40: ckpts[40]}, T, tmp_path / "s", base_dir=ckpts[0], progress=False
    )
    want = at(T)
    assert max_err(load(by_alpha), want) < 2e-6
    assert max_err(load(by_step), want) < 2e-6


def test_output_dtype_sharding_and_loading(run, tmp_path):
    ckpts, at = run
    out = extrapolate_weights(
        "lstsq",
        ckpts,
        T,
        tmp_path / "bf16",
        out_dtype=torch.bfloat16,
        max_shard_bytes=4096,
        progress=False,
    )
    assert (out / "model.safetensors.index.json").is_file()
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.dtype == torch.bfloat16
    state = model.state_dict()
    want = at(T)
    k = "model.layers.0.mlp.up_proj.weight"
    assert state[k].dtype == torch.bfloat16
    torch.testing.assert_close(state[k].float(), want[k], rtol=1e-2, atol=1e-3)


def test_noisy_trajectory_recovered_to_noise_level(tmp_path):
    noise = 1e-4
    ckpts, at = make_run(tmp_path, noise=noise, seed=1)
    want = at(T)
    times = np.array(WINDOW, float)
    for method, fit in [("lstsq", "free"), ("lstsq", "anchored"), ("relex", "free")]:
        # the base is noise-free: give it only to the methods anchored there
        steps = WINDOW if fit == "free" and method == "lstsq" else [0, *WINDOW]
        out = load(
            extrapolate_weights(
                method,
                {s: ckpts[s] for s in steps},
                T,
                tmp_path / f"{method}-{fit}",
                fit=fit,
                copy_norms=False,
                progress=False,
            )
        )
        coef = lstsq_coefficients(times, T, fit)
        expected_rms = noise * float(np.linalg.norm(coef))  # noise amplified by the fit
        err = torch.cat([(out[k] - want[k]).reshape(-1) for k in want])
        rms = float(err.pow(2).mean().sqrt())
        assert rms < 1.5 * expected_rms, (method, fit, rms, expected_rms)
        # the drift (≈ 0.1 per entry) is recovered far beyond the noise
        assert rms < 0.01 * float(torch.cat([want[k].reshape(-1) for k in want]).std())


def test_lr_time_axis_straightens_decaying_schedule(tmp_path):
    schedule = lr_schedule("linear", 1.0, total_steps=120, warmup_steps=5)
    tau = dict(zip([0, *WINDOW, T], lr_integral([0, *WINDOW, T], schedule), strict=True))
    ckpts, at = make_run(tmp_path, time_of=lambda t: tau[t] / 50.0)
    want = at(T)
    by_lr = extrapolate_weights(
        "two-point",
        ckpts,
        T,
        tmp_path / "lr",
        time="lr",
        lr_schedule=schedule,
        copy_norms=False,
        progress=False,
    )
    by_step = extrapolate_weights(
        "two-point", ckpts, T, tmp_path / "st", copy_norms=False, progress=False
    )
    assert max_err(load(by_lr), want) < 2e-6
    assert max_err(load(by_step), want) > 1e-3  # 1000× the fp32 error
    per_step = [schedule(s) for s in range(T)]
    by_list = extrapolate_weights(
        "lstsq",
        ckpts,
        T,
        tmp_path / "list",
        time="lr",
        lr_schedule=per_step,
        copy_norms=False,
        progress=False,
    )
    assert max_err(load(by_list), want) < 2e-6


# ---------------------------------------------------------------------------------------------
# Errors: clear message, nothing left behind


@pytest.mark.parametrize(
    "method, kwargs, steps, match",
    [
        ("two-point", {}, [40], "needs at least 2 window checkpoint"),
        ("lstsq", {}, [40], "needs at least 2 window checkpoint"),
        ("lstsq", {"fit": "anchored"}, [10, 40], "needs the base model"),
        ("lstsq", {"fit": "anchored"}, [0], "needs at least 1 window checkpoint"),
        ("relex", {}, [0, 40], "needs at least 2 window checkpoint"),
        ("expo", {}, [40], "needs the base model"),
        ("two-point", {}, [10, 40], "inside the window"),
        ("lstsq", {"target": 30}, [10, 40], "inside the window"),
        ("two-point", {"alpha": 2.0}, [10, 40], "either target_step or alpha"),
        ("relex", {"alpha": 2.0, "target": None}, [0, 10, 40], "alpha applies to"),
        ("lstsq", {"time": "lr"}, [10, 40], "needs lr_schedule"),
        ("lstsq", {"fit": "through-origin"}, [10, 40], "unknown fit"),
        ("weights", {}, [10, 40], "unknown extrapolation method"),
    ],
)
def test_bad_requests_raise_and_leave_nothing(run, tmp_path, method, kwargs, steps, match):
    ckpts, _ = run
    kwargs = dict(kwargs)
    target = kwargs.pop("target", 40 if match == "inside the window" else T)
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=match):
        extrapolate_weights(
            method, {s: ckpts[s] for s in steps}, target, out, progress=False, **kwargs
        )
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []


def test_mismatched_checkpoints_raise(run, tmp_path):
    ckpts, _ = run
    other = tmp_path / "other"
    Qwen2ForCausalLM(tiny_config(intermediate_size=48)).save_pretrained(other)
    out = tmp_path / "out"
    with pytest.raises(CheckpointError, match="intermediate_size"):
        extrapolate_weights("two-point", {10: ckpts[10], 40: other}, T, out, progress=False)
    assert not out.exists()


def test_missing_and_truncated_checkpoints_raise(run, tmp_path):
    ckpts, _ = run
    out = tmp_path / "out"
    with pytest.raises(CheckpointError, match="not found"):
        extrapolate_weights("two-point", {10: ckpts[10], 40: tmp_path / "nope"}, T, out)
    broken = tmp_path / "broken"
    shutil.copytree(ckpts[40], broken)
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match="truncated"):
        extrapolate_weights("two-point", {10: ckpts[10], 40: broken}, T, out)
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


# ---------------------------------------------------------------------------------------------
# Per-tensor operators

finite = st.floats(-10, 10, allow_nan=False, width=32)
shapes = st.tuples(st.integers(1, 5), st.integers(1, 5))


def tensors(shape, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g)


@settings(max_examples=50, deadline=None)
@given(shape=shapes, seed=st.integers(0, 2**16))
def test_two_point_and_expo_endpoints(shape, seed):
    w0, w1 = tensors(shape, seed), tensors(shape, seed + 1)
    torch.testing.assert_close(two_point(w0, w1, 1.0), w1)
    assert torch.equal(two_point(w0, w1, 0.0), w0)
    assert torch.equal(expo(w0, w1, 0.0), w1)
    torch.testing.assert_close(expo(w0, w1, 0.7), two_point(w0, w1, 1.7))


@settings(max_examples=50, deadline=None)
@given(shape=shapes, seed=st.integers(0, 2**16), alpha=finite, k=finite)
def test_operators_are_linear_in_their_inputs(shape, seed, alpha, k):
    a0, a1, b0, b1 = (tensors(shape, seed + i) for i in range(4))
    tol = dict(rtol=1e-4, atol=1e-4 * (1 + abs(alpha) * (1 + abs(k))))
    torch.testing.assert_close(
        two_point(a0 + k * b0, a1 + k * b1, alpha),
        two_point(a0, a1, alpha) + k * two_point(b0, b1, alpha),
        **tol,
    )
    times = [1.0, 2.5, 4.0]
    xs, ys = (
        [tensors(shape, seed + 10 + i) for i in range(3)],
        [tensors(shape, seed + 20 + i) for i in range(3)],
    )
    combined = lstsq_extrapolate([x + k * y for x, y in zip(xs, ys, strict=True)], times, 9.0)
    separate = lstsq_extrapolate(xs, times, 9.0) + k * lstsq_extrapolate(ys, times, 9.0)
    torch.testing.assert_close(combined, separate, rtol=1e-4, atol=1e-4 * (1 + abs(k)) * 10)


@settings(max_examples=50, deadline=None)
@given(
    shape=shapes,
    seed=st.integers(0, 2**16),
    times=st.lists(st.integers(1, 500), min_size=2, max_size=6, unique=True),
    target=st.integers(501, 5000),
    fit=st.sampled_from(["free", "anchored"]),
)
def test_lstsq_and_relex_exact_on_linear_data(shape, seed, times, target, fit):
    w0, d = tensors(shape, seed), 1e-3 * tensors(shape, seed + 1)
    w = [w0.double() + t * d.double() for t in times]
    want = w0.double() + target * d.double()
    intercept = 0.0 if fit == "anchored" else 0.01
    w = [(x + intercept).float() for x in w]
    # fp32 rounding of the inputs, amplified by the extrapolation weights
    gain = 1 + float(np.abs(lstsq_coefficients(times, target, fit)).sum())
    atol = 4 * 2**-23 * gain * (float(max(x.abs().max() for x in w)) + 1)
    got = lstsq_extrapolate(w, times, target, fit=fit, base=w0)
    torch.testing.assert_close(got.double(), want + intercept, rtol=0, atol=atol)
    if fit == "anchored":
        got = relex_extrapolate(w0, w, times, target, fit=fit)
        torch.testing.assert_close(got.double(), want, rtol=0, atol=atol)


@given(
    times=st.lists(st.floats(0, 100), min_size=2, max_size=8).filter(lambda x: np.ptp(x) > 1e-3),
    target=st.floats(100, 1000),
)
def test_free_lstsq_weights_sum_to_one_and_match_two_point(times, target):
    c = lstsq_coefficients(times, target, "free")
    assert math.isclose(c.sum(), 1.0, abs_tol=1e-6)
    if len(times) == 2:
        a = two_point_alpha(times[0], times[1], target)
        np.testing.assert_allclose(c, [1 - a, a], rtol=1e-6, atol=1e-6)


def test_relex_uses_the_rank1_direction_in_time():
    # δ_t = t·D + wiggle·E: the rank-1 direction is D; the wiggle (not linear in t) is dropped
    g = torch.Generator().manual_seed(0)
    w0, d, e = (torch.randn(30, 20, generator=g) for _ in range(3))
    times = [1.0, 2.0, 3.0, 4.0]
    wiggle = [0.0, 0.01, -0.01, 0.0]
    tensors_ = [w0 + t * d + s * e for t, s in zip(times, wiggle, strict=True)]
    got = relex_extrapolate(w0, tensors_, times, 10.0)
    rel = float((got - (w0 + 10 * d)).norm() / (10 * d).norm())
    assert rel < 5e-3
    # all-zero deltas give the base back
    assert torch.equal(relex_extrapolate(w0, [w0, w0], [1.0, 2.0], 5.0), w0)


def test_lr_integral_known_values():
    assert lr_integral([0, 10, 25], lr_schedule("constant", 2e-6, 100)) == pytest.approx(
        [0.0, 2e-5, 5e-5]
    )
    lin = lr_schedule("linear", 1.0, total_steps=100)
    # Σ_{s<100} (1 − s/100) = 100 − 4950/100
    assert lr_integral([100], lin)[0] == pytest.approx(50.5)
    assert lr_integral([150], lin)[0] == pytest.approx(50.5)  # zero after the end
    cos = lr_schedule("cosine", 1.0, total_steps=110, warmup_steps=10)
    assert cos(0) == 0.0 and cos(5) == pytest.approx(0.5) and cos(10) == pytest.approx(1.0)
    assert cos(60) == pytest.approx(0.5) and cos(110) == pytest.approx(0.0, abs=1e-12)
    # warm-up (Σ s/10, s<10 = 4.5) plus half a cosine over 100 steps (≈ 50 + 0.5 at s = 10)
    assert lr_integral([110], cos)[0] == pytest.approx(4.5 + 50.5, abs=1e-9)
    assert lr_integral([3], [0.1, 0.2, 0.3, 0.4]) == pytest.approx([0.6])
    with pytest.raises(ValueError, match="per-step learning rates"):
        lr_integral([5], [0.1, 0.2])
    with pytest.raises(ValueError, match="unknown lr schedule"):
        lr_schedule("step", 1.0, 10)


@given(
    kind=st.sampled_from(["constant", "linear", "cosine"]),
    total=st.integers(1, 300),
    warm=st.integers(0, 50),
    steps=st.lists(st.integers(0, 400), min_size=1, max_size=10),
)
def test_lr_integral_is_monotone_and_starts_at_zero(kind, total, warm, steps):
    warm = min(warm, total)
    sched = lr_schedule(kind, 1e-3, total, warm)
    taus = lr_integral(sorted(steps), sched)
    assert all(b >= a for a, b in zip(taus, taus[1:], strict=False))
    assert lr_integral([0], sched) == [0.0]
