"""The method registry, and the promise that production runs the tested per-tensor operators:
every tensor a model-level run writes equals, bit for bit, the pure operator applied to the
same checkpoints' tensors."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file
from tiny_models import UNTIED_SIZES, save_state, tiny_config
from transformers import Qwen2ForCausalLM

from rlpredict.alpharl import alpharl_extrapolate, alpharl_update
from rlpredict.cli import EXTRAPOLATE_METHODS, _weight_fits
from rlpredict.extrapolate import (
    PLAN_FILE,
    expo,
    extrapolate_weights,
    is_norm,
    linear_combination,
    lr_schedule,
    lstsq_extrapolate,
    plan_extrapolation,
    relex_extrapolate,
    time_axis,
    two_point,
)
from rlpredict.methods import METHODS, REGISTRY, configured_methods, get_method, weight_method
from rlpredict.plan import plan_jobs
from rlpredict.spectral import DEFAULT_MODULE_REGEX

WINDOW = [10, 20, 30, 40]
T = 100
ACC = {10: 0.31, 20: 0.36, 30: 0.38, 40: 0.44}


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> dict[int, Path]:
    """A curved, noisy trajectory: every method gives a different, non-trivial answer."""
    root = tmp_path_factory.mktemp("run")
    torch.manual_seed(3)
    config = tiny_config(**UNTIED_SIZES)
    Qwen2ForCausalLM(config).save_pretrained(root / "step_0")
    w0 = load_file(root / "step_0" / "model.safetensors")
    direction = {k: 1e-3 * torch.randn_like(v) for k, v in w0.items()}
    run = {0: root / "step_0"}
    for t in WINDOW:
        state = {
            k: w0[k] + (t + 0.002 * t * t) * d + 3e-4 * torch.randn_like(d)
            for k, d in direction.items()
        }
        run[t] = save_state(root / f"step_{t}", root / "step_0", state)
    return run


def load(model_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(Path(model_dir) / "model.safetensors")


def assert_bitwise(out: dict, want: dict) -> None:
    assert set(out) == set(want)
    for k in want:
        assert out[k].dtype == want[k].dtype and torch.equal(out[k], want[k]), k


SCHEDULE = lr_schedule("cosine", 1e-5, total_steps=120, warmup_steps=5)
CASES = {
    "two-point": ("two-point", WINDOW, {}),
    "two-point-alpha": ("two-point", [10, 40], {"alpha": 2.5, "target": None}),
    "lstsq-free": ("lstsq", WINDOW, {"time": "lr", "lr_schedule": SCHEDULE}),
    "lstsq-free-2": ("lstsq-free", [30, 40], {}),
    "lstsq-anchored": ("lstsq", [0, *WINDOW], {"fit": "anchored"}),
    "expo": ("expo", [0, 40], {"alpha": 1.5, "target": None}),
    "expo-target": ("expo", [0, 40], {"time": "lr", "lr_schedule": SCHEDULE}),
    "relex": ("relex", [0, *WINDOW], {}),
    "relex-anchored": ("relex", [0, *WINDOW], {"fit": "anchored", "copy_norms": True}),
}


def expected(method: str, steps: list[int], kw: dict, ckpts: dict[int, Path]) -> dict:
    """The pure operator applied to each tensor name of the checkpoints read."""
    state = {s: load(ckpts[s]) for s in steps}
    target = kw.get("target", T)
    spec = weight_method(method, kw.get("fit", "free"))
    window = [s for s in steps if s > 0] if spec.needs_base else steps
    all_steps = [0, *window] + ([target] if target is not None else [])
    times = time_axis(all_steps, kw.get("time", "step"), kw.get("lr_schedule"))
    taus = dict(zip(all_steps, times, strict=True))
    copy = kw.get("copy_norms", spec.copy_norms)
    out = {}
    for name in state[window[-1]]:
        if copy and is_norm(name):
            out[name] = state[window[-1]][name]
            continue
        tensors = [state[s][name] for s in window]
        if method == "two-point":
            alpha = kw.get("alpha") or (taus[target] - taus[window[0]]) / (
                taus[window[-1]] - taus[window[0]]
            )
            out[name] = two_point(tensors[0], tensors[-1], alpha)
        elif method == "expo":
            alpha = kw.get("alpha") or (taus[target] - taus[0]) / (taus[40] - taus[0]) - 1.0
            out[name] = expo(state[0][name], tensors[-1], alpha)
        elif spec.family == "lstsq":
            fit = kw.get("fit", "free")
            base = state[0][name] if fit == "anchored" else None
            times = [taus[s] for s in window]
            out[name] = lstsq_extrapolate(tensors, times, taus[target], fit=fit, base=base)
        else:
            times = [taus[s] for s in window]
            fit = kw.get("fit", "free")
            out[name] = relex_extrapolate(state[0][name], tensors, times, taus[target], fit=fit)
    return out


@pytest.mark.parametrize("case", list(CASES))
def test_model_level_runs_are_the_tested_operators_bit_for_bit(run, tmp_path, case):
    method, steps, kw = CASES[case]
    kw = dict(kw)
    target = kw.pop("target", T)
    out = extrapolate_weights(
        method, {s: run[s] for s in steps}, target, tmp_path / "out", progress=False, **kw
    )
    assert_bitwise(load(out), expected(method, steps, {**kw, "target": target}, run))


@pytest.mark.parametrize("case", ["two-point", "lstsq-free", "lstsq-anchored", "expo"])
def test_the_plan_is_written_and_its_coefficients_give_the_model(run, tmp_path, case):
    method, steps, kw = CASES[case]
    kw = dict(kw)
    target = kw.pop("target", T)
    out = extrapolate_weights(
        method, {s: run[s] for s in steps}, target, tmp_path / "out", progress=False, **kw
    )
    record = json.loads((out / PLAN_FILE).read_text())
    plan = plan_extrapolation(method, steps, target, **kw)
    assert record == json.loads(json.dumps(plan.record()))
    assert record["method"] in METHODS and record["rlpredict_version"]
    assert record["time"] == kw.get("time", "step")
    # W_ref + Σ c (W_step − W_ref) over the recorded coefficients is the written model
    state = {s: load(run[s]) for s in steps}
    ref = 0 if record["reference"] == "base" else record["reference"]
    got = load(out)
    for name, tensor in got.items():
        if plan.copy_norms and is_norm(name):
            continue
        terms = [(c["coefficient"], state[c["step"]][name]) for c in record["coefficients"]]
        assert torch.equal(tensor, linear_combination(state[ref][name], terms)), name


def test_alpharl_writes_the_tested_operator_and_its_plan(run, tmp_path):
    res = alpharl_extrapolate(
        {s: run[s] for s in [0, *WINDOW]}, ACC, tmp_path / "out", final_step=T, progress=False
    )
    got, w0 = load(res.path), load(run[0])
    window = {s: load(run[s]) for s in WINDOW}
    pattern = re.compile(DEFAULT_MODULE_REGEX)
    labels = [ACC[s] for s in WINDOW]
    for name, tensor in got.items():
        if not pattern.search(name):
            assert torch.equal(tensor, w0[name]), name
            continue
        deltas = [window[s][name] - w0[name] for s in WINDOW]
        update, _ = alpharl_update(
            deltas, labels, res.target_accuracy, method="auto", seed=0, name=name
        )
        assert torch.equal(tensor, w0[name] + update), name
    record = json.loads((res.path / PLAN_FILE).read_text())
    assert record["method"] == "alpharl" and record["steps"] == [0, *WINDOW]
    assert record["target_accuracy"] == res.target_accuracy


# ---------------------------------------------------------------------------------------------
# The registry: one name everywhere

SETTINGS = {
    "windows": [0.1, 0.4],
    "target_step": None,
    "methods": ["two-point", "lstsq-free", "lstsq-anchored", "expo", "relex", "alpharl", "logits"],
    "expo": {"alphas": [1.5, 2]},
    "alpharl": {"targets": ["forecast", "oracle"]},
}


def test_every_job_id_is_a_registry_name_or_its_variant():
    jobs = plan_jobs(list(range(0, 801, 80)), SETTINGS)
    assert {j.method for j in jobs} == {
        "two-point",
        "lstsq-free",
        "lstsq-anchored",
        "expo-a1.5",
        "expo-a2",
        "relex",
        "alpharl-forecast",
        "alpharl-oracle",
        "logits",
    }
    for job in jobs:
        assert job.spec is METHODS[job.name]
        assert job.method == job.spec.job_id(job.variant)
        assert job.model_id in (f"extrap/{job.method}/w{job.window}", f"logits/w{job.window}")
    assert [j.method for j in jobs if j.uses_final_result] == ["alpharl-oracle"] * 2
    assert {j.method for j in jobs if j.needs_dev_labels} == {"alpharl-forecast", "alpharl-oracle"}
    assert {j.method for j in jobs if not j.writes_model} == {"logits"}


def test_config_keys_map_to_registry_names_in_order():
    methods = ["two-point", "lstsq-anchored", "lstsq-free", "expo", "relex", "alpharl", "logits"]
    chosen = configured_methods({**SETTINGS, "methods": methods})
    assert [m.job_id(v) for m, v in chosen] == [
        "two-point",
        "lstsq-anchored",
        "lstsq-free",
        "expo-a1.5",
        "expo-a2",
        "relex",
        "alpharl-forecast",
        "alpharl-oracle",
        "logits",
    ]


def test_cli_choices_come_from_the_registry():
    assert tuple(_weight_fits()) == ("two-point", "lstsq-free", "lstsq-anchored")
    commands = {m.cli for m in REGISTRY if m.cli}
    assert commands == set(EXTRAPOLATE_METHODS)
    for name in ("expo", "relex", "alpharl"):
        assert EXTRAPOLATE_METHODS[name][0] == METHODS[name].summary


def test_weight_method_names_and_families():
    assert weight_method("lstsq", "anchored").name == "lstsq-anchored"
    assert weight_method("lstsq").name == "lstsq-free"
    assert weight_method("relex", "anchored").name == "relex"
    with pytest.raises(ValueError, match="unknown extrapolation method"):
        weight_method("alpharl")
    with pytest.raises(ValueError, match="unknown fit"):
        weight_method("lstsq", "through-origin")
    with pytest.raises(ValueError, match="choose one of"):
        get_method("lstsq")


# ---------------------------------------------------------------------------------------------
# linear_combination: the operator of the linear methods

shapes = st.tuples(st.integers(1, 5), st.integers(1, 5))


@settings(max_examples=50, deadline=None)
@given(
    shape=shapes,
    seed=st.integers(0, 2**16),
    coefs=st.lists(st.floats(-5, 5, allow_nan=False, width=32), min_size=0, max_size=5),
)
def test_linear_combination_in_place_or_not_and_its_value(shape, seed, coefs):
    g = torch.Generator().manual_seed(seed)
    ref = torch.randn(shape, generator=g)
    ys = [torch.randn(shape, generator=g) for _ in coefs]
    fresh = linear_combination(ref, list(zip(coefs, ys, strict=True)))
    reused = linear_combination(
        ref.clone(), [(c, y.clone()) for c, y in zip(coefs, ys, strict=True)], inplace=True
    )
    assert torch.equal(fresh, reused)
    want = ref.double() + sum(
        (c * (y.double() - ref.double()) for c, y in zip(coefs, ys, strict=True)),
        torch.zeros(shape, dtype=torch.float64),
    )
    torch.testing.assert_close(fresh.double(), want, rtol=1e-5, atol=1e-4)
