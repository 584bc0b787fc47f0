"""The claims table: each verdict rule on hand-built runs written by the real table
functions, boundaries, "not run" for switched-off analyses and missing inputs, the
delta-method standard errors, and the side-by-side command."""

import json
import math

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import copy_workflow, run_snakemake

from rlpredict import claims
from rlpredict.alpharl import FIT_COLUMNS
from rlpredict.checkpoints import write_not_built
from rlpredict.evaluate import write_not_built_result
from rlpredict.plan import plan_jobs, runnable
from rlpredict.tables import accuracy_vs_step, rank_ablation, speedup_vs_accuracy, write_table

STEPS = list(range(0, 41, 4))
FINAL = STEPS[-1]
ON = {"ablate": True, "sft": True, "extrapolate": True, "linearity": True}
METHODS = {
    "methods": ["two-point", "lstsq-free", "relex", "alpharl", "logits"],
    "alpharl": {"targets": ["forecast", "oracle"]},
}


def write_eval(path, accuracy, stderr, n=400):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"accuracy": accuracy, "accuracy_stderr": stderr, "n": n}))
    return path


def make_run(
    run,
    *,
    base=0.4,
    final=0.8,
    se=0.02,
    rl1=0.79,
    sft_final=0.7,
    sft1=0.41,
    predictions=None,
    weights_r2=None,
    logprob_r2=None,
    rank1_r2=None,
    windows=(0.2, 0.4, 0.7),
):
    """A run dir holding every table the claims read, written by the workflow's functions.
    ``predictions``: method → accuracy at every window (default: 0.5 for all)."""
    evals = run / "eval"
    steps = {
        s: write_eval(evals / f"step_{s}.json", base + (final - base) * s / FINAL, se)
        for s in STEPS
    }
    write_table(accuracy_vs_step(steps), run / "tables/accuracy_vs_step.csv", run / "tables/a.md")
    write_eval(evals / f"sft/step_{FINAL}.json", sft_final, se)
    ablated, stats, finals = (
        {},
        {},
        {
            "rl": steps[FINAL],
            "sft": evals / f"sft/step_{FINAL}.json",
        },
    )
    modules = {"modules": {"m": {"energy_kept": 0.3, "energy_share": 0.3}}}
    for source, acc in (("rl", rl1), ("sft", sft1)):
        for rank, value in (("1", acc), ("full", 0.8)):
            key = f"{source}/{rank}"
            ablated[key] = write_eval(evals / f"ablate/{source}/rank{rank}.json", value, se)
            stats[key] = run / f"analysis/ablate/{source}_rank{rank}.json"
            stats[key].parent.mkdir(parents=True, exist_ok=True)
            stats[key].write_text(json.dumps(modules))
    write_table(
        rank_ablation(ablated, finals, steps[0], stats),
        run / "tables/rank_ablation.csv",
        run / "tables/r.md",
    )
    jobs = plan_jobs(STEPS, {"windows": list(windows), **METHODS})
    predictions = predictions or {}
    job_evals = {f"step_{s}": p for s, p in steps.items()}
    for job in runnable(jobs):
        acc = predictions.get(job.method, 0.5)
        if isinstance(acc, dict):
            acc = acc[float(job.window)]
        out = evals / f"{job.model_id}.json"
        if isinstance(acc, str):  # the method could not build its model: acc is the reason
            write_not_built(run / "models" / job.model_id, acc)
            write_not_built_result(run / "models" / job.model_id, job.model_id, out)
            job_evals[job.model_id] = out
        else:
            job_evals[job.model_id] = write_eval(out, acc, se)
    history = pd.DataFrame({"step": [FINAL], "train_seconds": [100.0]})
    table = speedup_vs_accuracy(jobs, job_evals, steps[FINAL], steps[0], history, FINAL, {})
    write_table(table, run / "tables/speedup_vs_accuracy.csv", run / "tables/s.md")
    rng = np.random.default_rng(0)
    lin = run / "analysis/linearity"
    lin.mkdir(parents=True, exist_ok=True)
    weights_r2 = rng.uniform(0.78, 0.84, 500) if weights_r2 is None else weights_r2
    logprob_r2 = rng.uniform(0.8, 0.9, 300) if logprob_r2 is None else logprob_r2
    rank1_r2 = rng.uniform(0.93, 0.97, 14) if rank1_r2 is None else rank1_r2
    n = len(weights_r2)
    pd.DataFrame(
        {"tensor": ["w"] * n, "index": range(n), "change": 1.0, "slope": 1.0, "r2": weights_r2}
    ).to_parquet(lin / "weights.parquet")
    pd.DataFrame({"probe": 0, "position": range(len(logprob_r2)), "r2": logprob_r2}).to_parquet(
        lin / "logprobs.parquet"
    )
    fits = pd.DataFrame({c: [0.0] * len(rank1_r2) for c in FIT_COLUMNS})
    fits["r2"] = rank1_r2
    fits.to_parquet(lin / "rank1_r2.parquet")
    return run


def table_of(run, enabled=ON):
    table = claims.claims_table(claims.run_files(run, enabled, FINAL)).set_index("id")
    assert list(table.reset_index().columns) == claims.COLUMNS
    assert table["verdict"].isin(claims.VERDICTS).all()
    return table


# --------------------------------------------------------------------------------------
# Standard errors


def numeric_se(f, means, ses, h=1e-6):
    """√Σ (∂f/∂xᵢ · sᵢ)² with central finite differences: the delta method computed directly."""
    total = 0.0
    for i, s in enumerate(ses):
        up, down = list(means), list(means)
        up[i] += h
        down[i] -= h
        total += ((f(*up) - f(*down)) / (2 * h) * s) ** 2
    return math.sqrt(total)


def test_ratio_se_is_the_delta_method():
    a, sa, b, sb = 0.63, 0.024, 0.81, 0.019
    assert claims.ratio_se(a, sa, b, sb) == pytest.approx(
        numeric_se(lambda x, y: x / y, [a, b], [sa, sb]), rel=1e-6
    )
    assert claims.ratio_se(0.0, 0.01, 0.5, 0.02) == pytest.approx(0.02)  # a = 0 still defined
    assert math.isnan(claims.ratio_se(0.3, 0.01, 0.0, 0.01))


def test_gain_se_is_the_delta_method_and_agrees_with_simulation():
    acc, base, final, ses = 0.7, 0.4, 0.8, (0.01, 0.012, 0.008)

    def gain(a, b, f):
        return (a - b) / (f - b)

    got = claims.gain_se(acc, ses[0], base, ses[1], final, ses[2])
    assert got == pytest.approx(numeric_se(gain, [acc, base, final], ses), rel=1e-6)
    rng = np.random.default_rng(1)
    draws = [rng.normal(m, s, 200_000) for m, s in zip((acc, base, final), ses, strict=True)]
    assert got == pytest.approx(np.std(gain(*draws)), rel=0.05)


def test_difference_and_fraction_se():
    assert claims.difference_se(0.03, 0.04) == pytest.approx(0.05)
    assert claims.fraction_se(0.8, 100) == pytest.approx(0.04)


def test_bootstrap_median_se_is_seeded_and_shrinks_with_n():
    rng = np.random.default_rng(0)
    small, large = rng.normal(0, 1, 100), rng.normal(0, 1, 10_000)
    assert claims.bootstrap_median_se(small) == claims.bootstrap_median_se(small)
    assert 0 < claims.bootstrap_median_se(large) < claims.bootstrap_median_se(small)
    # the median's asymptotic s.e. for a standard normal is √(π/2)/√n
    assert claims.bootstrap_median_se(large) == pytest.approx(math.sqrt(math.pi / 2) / 100, rel=0.3)
    assert math.isnan(claims.bootstrap_median_se(np.array([0.5])))


# --------------------------------------------------------------------------------------
# Verdict rules and their boundaries (values chosen to be exact in binary)


@pytest.mark.parametrize(
    ("value", "stderr", "expected"),
    [
        (0.75, 0.125, "holds"),  # value − 2 s.e. exactly at the threshold
        (0.625, 0.125, "partly"),  # above the threshold, within 2 s.e.
        (0.375, 0.125, "partly"),  # below it, within 2 s.e.
        (0.25, 0.125, "partly"),  # value + 2 s.e. exactly at the threshold
        (0.125, 0.125, "fails"),  # violated by more than 2 s.e.
        (0.5, 0.0, "holds"),  # exactly at the threshold, no uncertainty
        (0.5, math.nan, "holds"),  # unknown s.e. counts as 0
    ],
)
def test_at_least(value, stderr, expected):
    assert claims.at_least(value, stderr, 0.5) == expected


@pytest.mark.parametrize(
    ("value", "stderr", "expected"),
    [
        (0.25, 0.125, "partly"),  # value + 2 s.e. exactly at the threshold: not strictly below
        (0.125, 0.125, "holds"),
        (0.75, 0.125, "fails"),  # value − 2 s.e. exactly at the threshold
        (0.625, 0.125, "partly"),
    ],
)
def test_below_is_the_mirror_of_at_least(value, stderr, expected):
    assert claims.below(value, stderr, 0.5) == expected


@pytest.mark.parametrize(
    ("value", "stderr", "expected"),
    [
        (0.75, 0.125, "partly"),  # value − 2 s.e. exactly at the threshold: not strictly above
        (0.875, 0.125, "holds"),
        (0.25, 0.125, "fails"),  # value + 2 s.e. exactly at the threshold
        (0.0, 0.0, "fails"),
    ],
)
def test_above_is_strict(value, stderr, expected):
    assert claims.above(value, stderr, 0.5) == expected


@pytest.mark.parametrize(
    ("value", "stderr", "expected"),
    [
        (0.5, 0.125, "holds"),  # [0.25, 0.75] is exactly the range
        (0.5, 0.25, "partly"),  # reaches past both ends
        (0.875, 0.0625, "partly"),  # estimate above the range, within 2 s.e. of its end
        (1.0, 0.0625, "fails"),  # wholly above
        (0.0, 0.0625, "fails"),  # wholly below
        (0.125, 0.0625, "partly"),  # lower end exactly reached by value + 2 s.e.
    ],
)
def test_within_range(value, stderr, expected):
    assert claims.within(value, stderr, 0.25, 0.75) == expected


def test_combine():
    assert claims.combine("holds", "holds") == "holds"
    assert claims.combine("fails", "fails") == "fails"
    assert claims.combine("holds", "fails") == "partly"
    assert claims.combine("partly", "holds") == "partly"


# --------------------------------------------------------------------------------------
# Claims on hand-built runs


def test_every_claim_is_decided_on_a_complete_run(tmp_path):
    table = table_of(make_run(tmp_path / "run"))
    assert list(table.index) == [f"C{i}" for i in range(1, 10)]
    assert table.loc["C1":"C8", "value"].notna().all()
    assert table.loc["C1":"C8", "stderr"].gt(0).all()
    assert table.loc["C9", "verdict"] == "not run"
    assert table["rule"].str.len().gt(40).all()
    assert table.loc["C3", "source_file"].endswith("analysis/linearity/rank1_r2.parquet")


def test_rank1_rl_value_and_stderr_come_from_the_tables_and_eval_json(tmp_path):
    table = table_of(make_run(tmp_path / "run", rl1=0.79, final=0.8, se=0.02))
    c1 = table.loc["C1"]
    assert c1["value"] == pytest.approx(0.79 / 0.8)
    assert c1["stderr"] == pytest.approx(claims.ratio_se(0.79, 0.02, 0.8, 0.02))
    assert c1["verdict"] == "partly"  # 98.75 % ± 3.5 %: straddles 99 %
    assert "gain recovered" in c1["this_run"] and "±" in c1["this_run"]
    assert "rank_ablation.csv" in c1["source_file"]


@pytest.mark.parametrize(
    ("rl1", "se", "expected"),
    [(1.0, 0.0, "holds"), (0.99, 0.0, "holds"), (0.5, 0.02, "fails"), (0.98, 0.02, "partly")],
)
def test_rank1_rl_verdicts(tmp_path, rl1, se, expected):
    table = table_of(make_run(tmp_path / "run", rl1=rl1, se=se, final=1.0))
    assert table.loc["C1", "verdict"] == expected


@pytest.mark.parametrize(
    ("sft1", "sft_final", "se", "expected"),
    [(0.02, 0.7, 0.02, "holds"), (0.7, 0.7, 0.0, "fails"), (0.68, 0.7, 0.02, "partly")],
)
def test_rank1_sft_is_the_c1_condition_failing(tmp_path, sft1, sft_final, se, expected):
    table = table_of(make_run(tmp_path / "run", sft1=sft1, sft_final=sft_final, se=se))
    c2 = table.loc["C2"]
    assert c2["verdict"] == expected
    assert c2["value"] == pytest.approx(sft1 / sft_final)
    assert c2["stderr"] == pytest.approx(claims.ratio_se(sft1, se, sft_final, se))


def test_switched_off_analyses_are_not_run_with_the_switch_named(tmp_path):
    run = make_run(tmp_path / "run")
    table = table_of(run, {"ablate": True, "sft": False, "extrapolate": False})
    assert table.loc["C1", "verdict"] == "partly"
    assert table.loc["C2", "verdict"] == "not run"
    assert "control.sft.enabled" in table.loc["C2", "rule"]
    for claim in ("C3", "C4", "C5"):
        assert table.loc[claim, "verdict"] == "not run"
        assert "linearity.enabled" in table.loc[claim, "rule"]
    for claim in ("C6", "C7", "C8"):
        assert table.loc[claim, "verdict"] == "not run"
        assert "extrapolate.enabled" in table.loc[claim, "rule"]
    off = table.loc[table["verdict"] == "not run"]
    assert off["value"].isna().all() and off["stderr"].isna().all()


def test_only_the_accuracy_table_is_needed(tmp_path):
    run = make_run(tmp_path / "run")
    table = table_of(run, {})
    assert set(table["verdict"]) == {"not run"}


def test_missing_inputs_are_not_run_and_name_the_file(tmp_path):
    run = make_run(tmp_path / "run")
    (run / "tables/speedup_vs_accuracy.csv").unlink()
    (run / "analysis/linearity/weights.parquet").unlink()
    (run / "eval" / f"sft/step_{FINAL}.json").unlink()
    table = table_of(run)
    for claim, name in (
        ("C2", "sft/step_40.json"),
        ("C4", "weights.parquet"),
        ("C6", "speedup_vs_accuracy.csv"),
        ("C8", "speedup_vs_accuracy.csv"),
    ):
        assert table.loc[claim, "verdict"] == "not run"
        assert "input absent" in table.loc[claim, "rule"] and name in table.loc[claim, "rule"]
    assert table.loc["C5", "verdict"] != "not run"


def test_rank1_not_among_the_ranks_is_not_run(tmp_path):
    run = make_run(tmp_path / "run")
    path = run / "tables/rank_ablation.csv"
    ablation = pd.read_csv(path, dtype={"rank": str})
    ablation[ablation["rank"] != "1"].to_csv(path, index=False)
    table = table_of(run)
    assert table.loc["C1", "verdict"] == table.loc["C2", "verdict"] == "not run"
    assert "rank 1 is not among ablate.ranks" in table.loc["C1", "rule"]


@pytest.mark.parametrize(
    ("weights", "expected"),
    [
        (np.full(1000, 0.8), "holds"),
        (np.full(1000, 0.3), "fails"),
        (np.full(1000, 0.95), "partly"),  # more than 70 % above 0.7, median above the range
        (np.r_[np.full(600, 0.8), np.full(400, 0.1)], "partly"),  # median fits, 60 % > 0.7
    ],
)
def test_weight_linearity_two_conditions(tmp_path, weights, expected):
    table = table_of(make_run(tmp_path / "run", weights_r2=weights))
    assert table.loc["C4", "verdict"] == expected
    assert table.loc["C4", "value"] == pytest.approx(np.median(weights))
    assert f"n = {len(weights)} weights" in table.loc["C4", "this_run"]


def test_logprob_and_rank1_linearity(tmp_path):
    table = table_of(
        make_run(tmp_path / "run", logprob_r2=np.full(50, 0.2), rank1_r2=np.array([0.9, np.nan]))
    )
    assert table.loc["C5", "verdict"] == "fails"
    assert "no number" in table.loc["C5", "paper_value"]
    assert table.loc["C3", "value"] == pytest.approx(0.9)  # NaN module dropped
    assert table.loc["C3", "verdict"] == "holds"  # one module: s.e. unknown, at the estimate


def test_early_window_is_decided_by_alpharl_forecast_never_the_oracle(tmp_path):
    predictions = {"alpharl-oracle": 0.8, "alpharl-forecast": 0.4, "relex": 0.78}
    table = table_of(make_run(tmp_path / "run", predictions=predictions, final=0.8))
    c6 = table.loc["C6"]
    assert c6["value"] == pytest.approx(0.4 / 0.8)
    assert c6["verdict"] == "fails"
    assert "window 0.4" in c6["this_run"]
    assert "best forecast: relex" in c6["this_run"]
    assert "oracle target (uses the final result)" in c6["this_run"]


def test_early_window_uses_the_largest_window_not_above_40_percent(tmp_path):
    predictions = {"alpharl-forecast": {0.2: 0.8, 0.3: 0.2, 0.5: 0.2}}
    run = make_run(tmp_path / "run", predictions=predictions, windows=(0.2, 0.3, 0.5))
    c6 = table_of(run).loc["C6"]
    assert "window 0.3" in c6["this_run"] and c6["value"] == pytest.approx(0.2 / 0.8)
    run = make_run(
        tmp_path / "one", windows=(0.1, 0.5), predictions={"two-point": {0.1: 0.6, 0.5: 0.5}}
    )
    c6 = table_of(run).loc["C6"]  # window 0.1 holds one checkpoint: AlphaRL cannot run there
    assert "needs at least 2 checkpoints" in c6["this_run"]
    assert "best forecast: two-point" in c6["this_run"] and c6["value"] == pytest.approx(0.6 / 0.8)
    run = make_run(tmp_path / "late", windows=(0.5,))
    c6 = table_of(run).loc["C6"]
    assert c6["verdict"] == "not run" and "no window ≤ 0.4" in c6["rule"]


def test_alpharl_that_cannot_fit_is_not_run_with_its_reason(tmp_path):
    """Equal window dev accuracies: AlphaRL writes no model, its evaluation records why, the
    speedup table keeps the row without an accuracy, and C6 falls to the best other forecast."""
    reason = "not run: all window accuracy labels are equal ({4: 0.25, 8: 0.25})"
    predictions = {"alpharl-forecast": {0.2: 0.5, 0.4: reason, 0.7: 0.5}, "relex": 0.7}
    run = make_run(tmp_path / "run", predictions=predictions, final=0.8)
    speedup = pd.read_csv(run / "tables/speedup_vs_accuracy.csv")
    row = speedup[(speedup["method"] == "alpharl-forecast") & (speedup["window"] == 0.4)]
    assert len(row) == 1 and math.isnan(row.iloc[0]["accuracy"])
    assert reason in row.iloc[0]["note"]
    assert speedup.dropna(subset=["accuracy"])["method"].nunique() == speedup["method"].nunique()
    c6 = table_of(run).loc["C6"]
    assert "labels are equal" in c6["this_run"] and "best forecast: relex" in c6["this_run"]
    assert c6["value"] == pytest.approx(0.7 / 0.8)


def test_extrapolation_against_continued_rl(tmp_path):
    predictions = {"two-point": {0.2: 0.1, 0.4: 0.1, 0.7: 0.79}, "logits": 0.9}
    table = table_of(make_run(tmp_path / "run", predictions=predictions, final=0.8, se=0.01))
    c7, c8 = table.loc["C7"], table.loc["C8"]
    assert c7["value"] == pytest.approx(-0.01) and "window 0.7" in c7["this_run"]
    assert c7["stderr"] == pytest.approx(math.sqrt(2) * 0.01)
    assert c7["verdict"] == "partly"  # −0.01 − 2·0.014 < −0.02 ≤ −0.01
    assert c8["value"] == pytest.approx(0.1) and c8["verdict"] == "holds"
    worse = table_of(make_run(tmp_path / "worse", predictions={"logits": 0.5}, final=0.8))
    assert worse.loc["C8", "verdict"] == "fails"


def test_logits_not_configured_is_not_run(tmp_path):
    run = make_run(tmp_path / "run")
    path = run / "tables/speedup_vs_accuracy.csv"
    speedup = pd.read_csv(path)
    speedup[speedup["method"] != "logits"].to_csv(path, index=False)
    c8 = table_of(run).loc["C8"]
    assert c8["verdict"] == "not run" and "extrapolate.methods" in c8["rule"]


def test_malformed_input_names_the_file(tmp_path):
    run = make_run(tmp_path / "run")
    path = run / "tables/rank_ablation.csv"
    pd.read_csv(path).drop(columns=["stderr"]).to_csv(path, index=False)
    with pytest.raises(claims.ClaimsError, match=r"rank_ablation\.csv: no column stderr"):
        table_of(run)
    (run / "analysis/linearity/weights.parquet").write_bytes(b"not parquet")
    with pytest.raises(claims.ClaimsError, match=r"weights\.parquet: unreadable table"):
        claims.claims_table(claims.run_files(run, {"linearity": True}, FINAL))


# --------------------------------------------------------------------------------------
# Side by side


def test_side_by_side_command(tmp_path, capsys):
    for name in ("default", "pretrained"):
        run = make_run(tmp_path / name)
        write_table(table_of(run).reset_index(), run / "tables/claims.csv", run / "t/c.md")
    before = (tmp_path / "default/tables/claims.csv").read_bytes()
    assert claims.main([str(tmp_path / "default"), str(tmp_path / "pretrained")]) == 0
    lines = capsys.readouterr().out.splitlines()
    header = [cell.strip() for cell in lines[0].split("|")[1:-1]]
    assert header == ["id", "claim", "papers", "default", "pretrained"]
    assert len(lines) == 2 + len(claims.CLAIMS)
    assert any(line.startswith("| C1 ") and "partly: " in line for line in lines)
    assert (tmp_path / "default/tables/claims.csv").read_bytes() == before


def test_side_by_side_missing_file_is_one_line(tmp_path, capsys):
    assert claims.main([str(tmp_path / "nowhere")]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "nowhere/tables/claims.csv: not found" in err


def test_side_by_side_malformed_file_is_one_line_and_left_unchanged(tmp_path, capsys):
    path = tmp_path / "run/tables/claims.csv"
    path.parent.mkdir(parents=True)
    path.write_text("id,claim\nC1,x\n")
    before = path.read_bytes()
    assert claims.main([str(tmp_path / "run")]) == 1
    out = capsys.readouterr()
    assert out.out == ""
    assert out.err.strip().splitlines() == [
        f"rlpredict.claims: error: {path}: no column paper_value, this_run, verdict"
    ]
    assert path.read_bytes() == before


# --------------------------------------------------------------------------------------
# The workflow asks only for the inputs of enabled analyses


def test_claims_rule_plans_with_analyses_switched_off(tmp_path):
    workdir = copy_workflow(tmp_path)
    config = yaml.safe_load((workdir / "config/smoke.yaml").read_text())
    config["linearity"]["enabled"] = False
    config["extrapolate"]["enabled"] = False
    config["control"]["sft"]["enabled"] = False
    (workdir / "off.yaml").write_text(yaml.safe_dump(config))
    result = run_snakemake(workdir, "-n", "--configfile", "off.yaml")
    assert result.returncode == 0, result.stderr[-3000:]
    planned = result.stdout + result.stderr
    assert "claims_table" in planned
    for rule in ("weight_linearity", "speedup_table", "train_sft_control"):
        assert rule not in planned
