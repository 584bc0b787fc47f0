"""AlphaRL: known answers on rank-1 trajectories ΔW(t) = t·σ·u vᵀ (+ noise) with accuracy labels
linear in t, the pure parts (sign alignment, PLS fit), and the errors."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file
from tiny_models import UNTIED_SIZES, save_state, tiny_config
from transformers import Qwen2ForCausalLM

from rlpredict.alpharl import (
    FIT_COLUMNS,
    align_signs,
    alpharl_extrapolate,
    alpharl_fits,
    alpharl_update,
    fit_module,
    target_accuracies,
    target_accuracy,
)
from rlpredict.cli import main
from rlpredict.spectral import DEFAULT_MODULE_REGEX

WINDOW = [10, 20, 30, 40]
T = 100
ACC = {t: 0.3 + 0.004 * t for t in WINDOW}  # reaches 0.7 at T


def make_run(root: Path, noise: float = 0.0, seed: int = 0):
    """Modules move along t·σ·u vᵀ (+ N(0, noise²)); other tensors along t·D."""
    torch.manual_seed(seed)
    config = tiny_config(**UNTIED_SIZES)
    base_dir = root / "step_0"
    Qwen2ForCausalLM(config).save_pretrained(base_dir)
    w0 = load_file(base_dir / "model.safetensors")
    pattern = re.compile(DEFAULT_MODULE_REGEX)
    direction = {}
    for k, v in w0.items():
        if pattern.search(k):
            u = torch.nn.functional.normalize(torch.randn(v.shape[0]), dim=0)
            vv = torch.nn.functional.normalize(torch.randn(v.shape[1]), dim=0)
            direction[k] = float(torch.empty(()).uniform_(5e-3, 2e-2)) * torch.outer(u, vv)
        else:
            direction[k] = 1e-3 * torch.randn_like(v)

    def delta(t: int) -> dict[str, torch.Tensor]:
        return {k: t * direction[k] for k in w0}

    run = {0: base_dir}
    for t in WINDOW:
        state = {k: w0[k] + d for k, d in delta(t).items()}
        if noise:
            state = {
                k: v + noise * torch.randn_like(v) if pattern.search(k) else v
                for k, v in state.items()
            }
        run[t] = save_state(root / f"step_{t}", base_dir, state)
    return run, w0, delta, pattern


@pytest.fixture(scope="module")
def noisy_run(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("alpharl"), noise=2e-4)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def test_forecast_recovers_final_update(noisy_run, tmp_path):
    ckpts, w0, delta, pattern = noisy_run
    res = alpharl_extrapolate(ckpts, ACC, tmp_path / "out", final_step=T, progress=False)
    assert res.target_accuracy == pytest.approx(0.7)
    out = load_file(res.path / "model.safetensors")
    final = delta(T)
    modules = [k for k in w0 if pattern.search(k)]
    assert len(modules) == 14
    for k in w0:
        if k in modules:
            # noise 2e-4 per entry vs a rank-1 signal of ‖ΔW(T)‖ = 0.5–2
            assert rel_err(out[k] - w0[k], final[k]) < 0.02, k
        else:
            assert torch.equal(out[k], w0[k]), k  # everything else stays at the base
    fits = res.fits
    assert list(fits.columns) == FIT_COLUMNS
    assert sorted(fits["name"]) == sorted(modules)
    assert (fits["r2"] > 0.99).all()
    assert set(fits["layer"]) == {0, 1}
    assert set(fits["module"]) == {
        f"{p}.{m}_proj"
        for p, ms in [("self_attn", "qkvo"), ("mlp", ["gate", "up", "down"])]
        for m in ms
    }


def test_oracle_number_and_scale_none(noisy_run, tmp_path):
    ckpts, w0, delta, pattern = noisy_run
    forecast = alpharl_extrapolate(ckpts, ACC, tmp_path / "f", final_step=T, progress=False)
    oracle = alpharl_extrapolate(
        ckpts, ACC, tmp_path / "o", target="oracle", final_accuracy=0.7, progress=False
    )
    number = alpharl_extrapolate(ckpts, ACC, tmp_path / "n", target=0.5, progress=False)
    a, b, c = (load_file(r.path / "model.safetensors") for r in (forecast, oracle, number))
    k = "model.layers.1.mlp.up_proj.weight"
    torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6)
    # y* = 0.5 is reached at t = 50 on the linear label path
    assert rel_err(c[k] - w0[k], delta(50)[k]) < 0.02
    # σ₁u₁ without the Frobenius rescale: nearly the same here (the update is nearly rank 1)
    none = alpharl_extrapolate(
        ckpts, ACC, tmp_path / "s", final_step=T, scale="none", progress=False
    )
    d = load_file(none.path / "model.safetensors")
    assert rel_err(d[k] - w0[k], delta(T)[k]) < 0.02


def test_add_to_last_window_checkpoint(noisy_run, tmp_path):
    ckpts, w0, delta, pattern = noisy_run
    res = alpharl_extrapolate(
        ckpts, ACC, tmp_path / "out", final_step=T, add_to="last", progress=False
    )
    out = load_file(res.path / "model.safetensors")
    last = load_file(ckpts[40] / "model.safetensors")
    for k in w0:
        if pattern.search(k):
            assert rel_err(out[k] - last[k], delta(T)[k]) < 0.02, k
        else:
            assert torch.equal(out[k], last[k]), k


def test_fits_only_matches_the_fits_of_a_written_model(noisy_run, tmp_path):
    ckpts, *_ = noisy_run
    fits = alpharl_fits(ckpts, ACC, progress=False)
    written = alpharl_extrapolate(ckpts, ACC, tmp_path / "o", final_step=T, progress=False).fits
    np.testing.assert_allclose(fits["r2"], written["r2"])
    assert list(tmp_path.iterdir()) == [tmp_path / "o"]


def test_exact_rank1_trajectory_pure():
    g = torch.Generator().manual_seed(3)
    u = torch.nn.functional.normalize(torch.randn(24, generator=g), dim=0)
    v = torch.nn.functional.normalize(torch.randn(12, generator=g), dim=0)
    sigma = 0.3
    deltas = [t * sigma * torch.outer(u, v) for t in WINDOW]
    labels = [ACC[t] for t in WINDOW]
    pred, fit = alpharl_update(deltas, labels, 0.7)
    assert fit.r2 == pytest.approx(1.0)
    assert rel_err(pred, T * sigma * torch.outer(u, v)) < 1e-5


@settings(max_examples=30, deadline=None)
@given(n=st.integers(2, 6), dim=st.integers(1, 8), seed=st.integers(0, 2**16))
def test_align_signs(n, dim, seed):
    g = torch.Generator().manual_seed(seed)
    vs = [torch.randn(dim, generator=g) for _ in range(n)]
    out = align_signs(vs)
    assert torch.equal(out[-1], vs[-1])
    for a, b in zip(out, out[1:], strict=False):
        assert float(a @ b) >= 0
    for a, b in zip(out, vs, strict=True):
        assert torch.equal(a, b) or torch.equal(a, -b)


def test_align_signs_undoes_a_flipped_step_and_noisy_update_is_recovered():
    g = torch.Generator().manual_seed(4)
    u, v = torch.randn(10, generator=g), torch.randn(8, generator=g)
    x = [t * u for t in WINDOW]
    flipped = [-x[0], x[1], -x[2], x[3]]
    for a, b in zip(align_signs(flipped), x, strict=True):
        assert torch.equal(a, b)
    deltas = [t * torch.outer(u, v) + 1e-3 * torch.randn(10, 8, generator=g) for t in WINDOW]
    pred, fit = alpharl_update(deltas, [ACC[t] for t in WINDOW], 0.7)
    assert fit.r2 > 0.999
    assert rel_err(pred, T * torch.outer(u, v)) < 1e-2


def test_fit_module_errors_and_constant_module():
    x = np.arange(12.0).reshape(4, 3)
    with pytest.raises(ValueError, match="all accuracy labels are equal"):
        fit_module(x, [0.5] * 4)
    with pytest.raises(ValueError, match=">= 2 labelled points"):
        fit_module(x[:1], [0.5])
    const = fit_module(np.ones((4, 3)), [0.1, 0.2, 0.3, 0.4])
    assert np.isnan(const.r2)
    np.testing.assert_array_equal(const.predict(0.9), np.ones(3))


def test_target_accuracy():
    assert target_accuracy("forecast", ACC, T) == pytest.approx(0.7)
    assert target_accuracy("oracle", ACC, T, final_accuracy=0.65) == 0.65
    assert target_accuracy(0.55, ACC, None) == 0.55
    with pytest.raises(ValueError, match="needs final_accuracy"):
        target_accuracy("oracle", ACC, T)
    with pytest.raises(ValueError, match="unknown target"):
        target_accuracy("best", ACC, T)


@pytest.mark.parametrize(
    "steps, acc, kwargs, match",
    [
        ([0, 10, 20, 30], {}, {}, "no(ne)? .*labels|labels .*none"),
        ([0, 10, 20, 30], {10: 0.3, 30: 0.5}, {}, r"labels missing .*\[20\]"),
        ([0, 40], ACC, {}, "at least 2 window checkpoints"),
        ([10, 20, 30], ACC, {}, "needs the base model"),
        ([0, 10, 20, 30], dict.fromkeys(WINDOW, 0.4), {}, "all window accuracy labels are equal"),
        ([0, 10, 20, 30], ACC, {"final_step": 30}, "inside the window"),
        ([0, 10, 20, 30], ACC, {"target": "oracle"}, "needs final_accuracy"),
        ([0, 10, 20, 30], ACC, {"module_regex": r"nothing\.here"}, "matches no 2-D tensor"),
        ([0, 10, 20, 30], ACC, {"add_to": "final"}, "unknown add_to"),
    ],
)
def test_errors_leave_nothing(noisy_run, tmp_path, steps, acc, kwargs, match):
    ckpts, *_ = noisy_run
    kwargs = {"final_step": T} | kwargs
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=match):
        alpharl_extrapolate({s: ckpts[s] for s in steps}, acc, out, progress=False, **kwargs)
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------------
# The target y* is an accuracy: a forecast outside [0, 1] is clamped, inputs outside are refused

RISING = {10: 0.3, 20: 0.4, 30: 0.5}  # the line reaches 1.2 at step 100


def test_forecast_outside_the_accuracy_range_is_clamped_with_a_warning(caplog):
    with caplog.at_level("WARNING", logger="rlpredict.alpharl"):
        assert target_accuracies("forecast", RISING, 100) == (1.0, pytest.approx(1.2))
    assert "y* = 1.2000" in caplog.text and "outside [0, 1]" in caplog.text
    caplog.clear()
    falling = {10: 0.5, 20: 0.4, 30: 0.3}
    with caplog.at_level("WARNING", logger="rlpredict.alpharl"):
        assert target_accuracies("forecast", falling, 100) == (0.0, pytest.approx(-0.4))
        assert target_accuracy("forecast", falling, 100) == 0.0
    assert "y* = -0.4000" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="rlpredict.alpharl"):
        assert target_accuracies("forecast", RISING, 60) == pytest.approx((0.8, 0.8))
    assert caplog.text == ""  # inside the range: used as forecast, no warning


@pytest.mark.parametrize(
    "target, final_accuracy, match",
    [
        (1.5, None, r"target y\* must be an accuracy in \[0, 1\], got 1.5"),
        (-0.1, None, "got -0.1"),
        (float("nan"), None, "got nan"),
        ("oracle", 1.2, r"final accuracy \(oracle target\) must be an accuracy in \[0, 1\]"),
    ],
)
def test_given_targets_outside_the_accuracy_range_are_refused(target, final_accuracy, match):
    with pytest.raises(ValueError, match=match):
        target_accuracies(target, RISING, 100, final_accuracy)


def test_labels_outside_the_accuracy_range_are_refused(noisy_run, tmp_path):
    ckpts, *_ = noisy_run
    percent = {t: 100 * a for t, a in ACC.items()}  # 34 % written as 34
    with pytest.raises(ValueError, match=r"accuracy label of step 10 \(.*step_10\) .* got 34"):
        alpharl_extrapolate(ckpts, percent, tmp_path / "out", final_step=T, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_clamped_forecast_is_recorded_and_used(noisy_run, tmp_path):
    """ACC reaches 0.7 at step 100 and 1.1 at step 200: y* = 1, the raw 1.1 is kept."""
    ckpts, *_ = noisy_run
    res = alpharl_extrapolate(ckpts, ACC, tmp_path / "f", final_step=2 * T, progress=False)
    assert res.target_accuracy == 1.0 and res.target_accuracy_raw == pytest.approx(1.1)
    assert res.target_clamped
    one = alpharl_extrapolate(ckpts, ACC, tmp_path / "n", target=1.0, progress=False)
    assert not one.target_clamped and one.target_accuracy_raw == 1.0
    a, b = (load_file(r.path / "model.safetensors") for r in (res, one))
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)
    np.testing.assert_allclose(res.fits["z_target"], one.fits["z_target"])


def test_issue_cli_forecast_above_one_is_clamped_and_says_so(noisy_run, tmp_path):
    """The issue's command, run by the installed executable: y* = 1 used, 1.2 reported."""
    ckpts, *_ = noisy_run
    pairs = [f"{t}={ckpts[t]}" for t in (0, 10, 20, 30)]
    acc = ["--accuracy", "10=0.3", "--accuracy", "20=0.4", "--accuracy", "30=0.5"]
    exe = Path(sys.executable).with_name("rlpredict")
    argv = [str(exe), "extrapolate", "alpharl", *pairs, *acc, "--final-step", "100"]
    done = subprocess.run(
        [*argv, "--out", str(tmp_path / "pred")],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "target forecast y* = 1.0000 (forecast 1.2000 clamped to [0, 1])" in done.stdout
    assert "y* = 1.2000" in done.stderr and "outside [0, 1]" in done.stderr, done.stderr
    assert (tmp_path / "pred" / "model.safetensors").is_file()


def test_cli_refuses_a_given_target_outside_the_accuracy_range(noisy_run, tmp_path, capsys):
    ckpts, *_ = noisy_run
    pairs = [f"{t}={ckpts[t]}" for t in (0, 10, 20, 30)]
    acc = ["--accuracy", "10=0.3", "--accuracy", "20=0.4", "--accuracy", "30=0.5"]
    out = tmp_path / "pred"
    assert main(["extrapolate", "alpharl", *pairs, *acc, "--target", "1.2", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("rlpredict: error: ") and err.count("\n") == 1, err
    assert "must be an accuracy in [0, 1], got 1.2" in err
    assert not out.exists()
