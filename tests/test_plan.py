import pytest

from rlpredict.plan import plan_jobs, runnable, window_steps

STEPS = list(range(0, 801, 80))
SETTINGS = {
    "windows": [0.1, 0.2, 0.4],
    "target_step": None,
    "methods": ["two-point", "lstsq-free", "lstsq-anchored", "expo", "relex", "alpharl", "logits"],
    "expo": {"alphas": [1.5]},
    "alpharl": {"targets": ["forecast", "oracle"]},
}


def test_window_steps():
    assert window_steps(STEPS, 0.1) == [80]
    assert window_steps(STEPS, 0.4) == [80, 160, 240, 320]
    assert window_steps(STEPS, 0.05) == []


def test_jobs_use_only_window_checkpoints():
    jobs = plan_jobs(STEPS, SETTINGS)
    for job in jobs:
        limit = float(job.window) * STEPS[-1]
        assert all(step <= limit for step in job.steps), job
        assert job.target_step == 800
    two_point = {j.window: j for j in jobs if j.method == "two-point"}
    assert two_point["0.1"].steps == (0, 80)  # one checkpoint: from the base
    assert two_point["0.4"].steps == (80, 320)
    logits = {j.window: j for j in jobs if j.method == "logits"}
    assert logits["0.4"].alpha == pytest.approx((800 - 80) / (320 - 80))
    assert {j.operator for j in jobs} == {
        "two-point",
        "lstsq",
        "expo",
        "relex",
        "alpharl",
        "logits",
    }


def test_methods_needing_two_window_checkpoints_are_skipped_with_a_reason():
    jobs = plan_jobs(STEPS, SETTINGS)
    skipped = [j for j in jobs if j.skipped]
    assert {j.method for j in skipped} == {"relex", "alpharl-forecast", "alpharl-oracle"}
    assert all(j.window == "0.1" and "at least 2" in j.skipped for j in skipped)
    assert len(runnable(jobs)) == len(jobs) - 3
    assert len({j.model_id for j in runnable(jobs)}) == len(runnable(jobs))


def test_target_inside_the_window_is_an_error():
    with pytest.raises(ValueError, match="not before the target step 300"):
        plan_jobs(STEPS, {**SETTINGS, "target_step": 300})
