"""The regime sweep: config expansion, aggregation on known tables, and the Snakemake target."""

import math

import pandas as pd
import pytest
import yaml
from conftest import REPO, copy_workflow, run_snakemake

from rlpredict.sweep import (
    expand_sweep,
    load_schema,
    regime_figure,
    regime_table,
    run_tables,
    summary_table,
    window_methods,
    write_sweep_tables,
)

SCHEMA = load_schema(REPO / "workflow" / "schemas" / "config.schema.yaml")


def sweep_config(settings: dict, seeds=(0, 1)) -> dict:
    return {
        "train": {"steps": 40, "save_every": 10},
        "sweep": {"seeds": list(seeds), "settings": settings},
    }


# --- config expansion ------------------------------------------------------------------------


def test_expand_applies_overrides_per_setting_and_seed():
    config = sweep_config(
        {
            "plain": {},
            "kl": {"train.trl.kl_beta": 0.3, "eval": {"temperature": 1.0, "repeats": 4}},
        }
    )
    runs = expand_sweep(config, SCHEMA)
    assert [(r.setting, r.seed, r.run) for r in runs] == [
        ("plain", 0, "sweep-plain-s0"),
        ("plain", 1, "sweep-plain-s1"),
        ("kl", 0, "sweep-kl-s0"),
        ("kl", 1, "sweep-kl-s1"),
    ]
    kl = runs[3].config
    assert kl["run"] == "sweep-kl-s1" and kl["seed"] == 1
    assert kl["train"] == {"steps": 40, "save_every": 10, "trl": {"kl_beta": 0.3}}
    assert kl["eval"] == {"temperature": 1.0, "repeats": 4}
    assert runs[3].overrides == {
        "train.trl.kl_beta": 0.3,
        "eval.temperature": 1.0,
        "eval.repeats": 4,
    }
    # the base config is not shared between runs
    assert "trl" not in runs[0].config["train"]
    assert config["train"] == {"steps": 40, "save_every": 10}


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        (sweep_config({"kl": {"train.trl.kl_betta": 0.3}}), "train.trl.kl_betta"),
        (sweep_config({"kl": {"train": {"trll": {"kl_beta": 0.3}}}}), "train.trll"),
        (sweep_config({"kl": {"train.trl.kl_beta": -1}}), "train.trl.kl_beta"),
        (sweep_config({"x": {"seed": 3}}), "'seed' is set per run"),
        (sweep_config({"bad-name": {}}), "bad-name"),
        (sweep_config({"a": {}}, seeds=[0, 0]), "repeated seed"),
        (sweep_config({"a": {"seeds": []}}), "sweep.settings.a.seeds"),
        (sweep_config({"a": {"seeds": [1, 1]}}), "repeated seed"),
        (sweep_config({"a": {"seeds": 0}}), "sweep.settings.a.seeds"),
        ({**sweep_config({"a": {}}), "run": "x"}, "top-level 'run'"),
        ({"sweep": {"settings": {"a": {}}, "seed": [0]}}, "unknown key(s) seed"),
        ({"train": {}}, "no 'sweep' section"),
    ],
)
def test_expand_rejects_bad_configs_naming_the_key(config, expected):
    with pytest.raises(ValueError) as err:
        expand_sweep(config, SCHEMA)
    assert expected in str(err.value)


def test_repository_sweep_config_expands():
    config = yaml.safe_load((REPO / "config" / "sweep.yaml").read_text())
    runs = expand_sweep(config, SCHEMA)
    settings = list(config["sweep"]["settings"])
    assert len(runs) == len(settings) * len(config["sweep"]["seeds"])
    assert len(config["sweep"]["seeds"]) >= 2
    default = next(r for r in runs if r.setting == "default")
    for name in ("sampled", "sharpen"):
        run = next(r for r in runs if r.setting == name)
        assert run.config["eval"]["temperature"] > 0 and run.config["eval"]["repeats"] > 1
    sharpen = next(r for r in runs if r.setting == "sharpen")
    base_target = default.config["base"]["warmup"]["target_accuracy"]
    assert sharpen.config["base"]["warmup"]["target_accuracy"] > base_target


def test_a_setting_may_name_its_own_seeds():
    config = sweep_config({"plain": {}, "kl": {"seeds": [3], "train.trl.kl_beta": 0.3}})
    runs = expand_sweep(config, SCHEMA)
    assert [r.run for r in runs] == ["sweep-plain-s0", "sweep-plain-s1", "sweep-kl-s3"]
    assert runs[2].overrides == {"train.trl.kl_beta": 0.3}
    assert runs[2].config["seed"] == 3


# --- aggregation -----------------------------------------------------------------------------


def write_run_tables(
    root, run, base, final, r2, frac, rank1, rel_two_point, rel_lstsq, stop
) -> dict:
    """Per-run CSVs shaped like the workflow's, with known numbers."""
    tables = root / run / "tables"
    tables.mkdir(parents=True)
    pd.DataFrame(
        {"step": [0, 10, 20], "accuracy": [base, (base + final) / 2, final], "n": 100}
    ).to_csv(tables / "accuracy_vs_step.csv", index=False)
    pd.DataFrame(
        {
            "what": ["weights", "weights", "token log-probs", "rank-1 (PLS vs dev accuracy)"],
            "statistic": ["median R²", "fraction R² > 0.7", "median R²", "median R²"],
            "value": [r2, frac, 0.5, 0.9],
            "papers": ["", "", "", ""],
        }
    ).to_csv(tables / "linearity.csv", index=False)
    pd.DataFrame(
        {
            "source": ["rl", "rl", "sft"],
            "rank": ["1", "full", "1"],
            "relative_accuracy": [rank1, 1.0, 0.123],
            "rank1_energy_share_median": [0.3, 0.3, 0.2],
        }
    ).to_csv(tables / "rank_ablation.csv", index=False)
    pd.DataFrame(
        {
            "method": ["two-point", "lstsq-free", "relex", "two-point", "lstsq-free", "relex"],
            "window": [0.2, 0.2, 0.2, 0.4, 0.4, 0.4],
            "relative_accuracy": [0.1, 0.2, math.nan, rel_two_point, rel_lstsq, math.nan],
            "stop_relative_accuracy": [0.7, 0.7, math.nan, stop, stop, math.nan],
            "note": ["", "", "too few checkpoints", "", "", "too few checkpoints"],
        }
    ).to_csv(tables / "speedup_vs_accuracy.csv", index=False)
    return {
        name: str(tables / f"{name}.csv")
        for name in ("accuracy_vs_step", "linearity", "rank_ablation", "speedup_vs_accuracy")
    }


@pytest.fixture
def runs(tmp_path):
    numbers = {
        ("kl", 0): (0.30, 0.60, 0.80, 0.70, 0.50, 0.90, 1.00, 0.80),
        ("kl", 1): (0.40, 0.60, 0.90, 0.80, 0.70, 0.95, 1.10, 0.84),
        ("plain", 0): (0.35, 0.75, 0.70, 0.40, 0.20, 0.30, 0.60, 0.75),
    }
    return [
        {
            "setting": setting,
            "seed": seed,
            "run": f"sweep-{setting}-s{seed}",
            "overrides": "train.trl.kl_beta=0.3" if setting == "kl" else "",
            "tables": write_run_tables(tmp_path, f"sweep-{setting}-s{seed}", *values),
        }
        for (setting, seed), values in numbers.items()
    ]


def test_run_tables_follow_the_runs_outputs():
    outputs = ["results/r/tables/linearity.csv", "results/r/tables/accuracy_vs_step.csv"]
    assert run_tables("r", outputs) == {
        "accuracy_vs_step": "results/r/tables/accuracy_vs_step.csv",
        "linearity": "results/r/tables/linearity.csv",
        "rank_ablation": None,
        "speedup_vs_accuracy": None,
    }


def test_regime_table_known_answers(runs):
    table = regime_table(runs)
    assert list(table["run"]) == ["sweep-kl-s0", "sweep-kl-s1", "sweep-plain-s0"]
    row = table.iloc[1]
    assert row["base_accuracy"] == pytest.approx(0.40)
    assert row["final_accuracy"] == pytest.approx(0.60)
    assert row["gain"] == pytest.approx(0.20)
    assert row["weight_r2_median"] == pytest.approx(0.90)
    assert row["weight_r2_frac_gt_0_7"] == pytest.approx(0.80)
    assert row["logprob_r2_median"] == pytest.approx(0.5)
    assert row["rank1_pls_r2_median"] == pytest.approx(0.9)
    assert row["rank1_relative_accuracy"] == pytest.approx(0.70)  # the rl row, not sft's
    assert row["rel_two-point_w0.4"] == pytest.approx(0.95)
    assert row["rel_lstsq-free_w0.4"] == pytest.approx(1.10)
    assert row["rel_two-point_w0.2"] == pytest.approx(0.1)
    assert row["rel_stop_w0.4"] == pytest.approx(0.84)
    assert math.isnan(row["rel_relex_w0.4"])  # a skipped method stays visible as NaN
    assert window_methods(table, 0.4) == ["stop", "two-point", "lstsq-free", "relex"]


def test_summary_mean_and_sd_per_setting(runs):
    summary = summary_table(regime_table(runs))
    assert list(summary["setting"]) == ["kl", "plain"]
    assert list(summary["seeds"]) == [2, 1]
    kl = summary.iloc[0]
    assert kl["gain_mean"] == pytest.approx(0.25)
    assert kl["gain_sd"] == pytest.approx(math.sqrt(0.005))  # gains 0.30 and 0.20
    assert kl["rel_two-point_w0.4_mean"] == pytest.approx(0.925)
    assert kl["rel_two-point_w0.4_sd"] == pytest.approx(math.sqrt(2) * 0.025)
    assert math.isnan(summary.iloc[1]["gain_sd"])  # one seed: no spread
    assert "seed_mean" not in summary.columns


def test_missing_table_gives_missing_columns(runs):
    runs[2]["tables"]["linearity"] = None
    table = regime_table(runs)
    assert math.isnan(table.iloc[2]["weight_r2_median"])
    assert table.iloc[0]["weight_r2_median"] == pytest.approx(0.80)


def test_tables_and_figure_are_written(runs, tmp_path):
    table = regime_table(runs)
    summary = summary_table(table)
    out = tmp_path / "sweep"
    write_sweep_tables(table, summary, out / "t.csv", out / "s.csv", out / "t.md")
    assert pd.read_csv(out / "t.csv")["gain"].tolist() == pytest.approx([0.3, 0.2, 0.4])
    markdown = (out / "t.md").read_text()
    assert "0.250 ± 0.071" in markdown  # kl gain over seeds
    assert "train.trl.kl_beta=0.3" in markdown
    fig = regime_figure(table, 0.4)
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["kl", "plain"]
    with pytest.raises(ValueError, match="window 0.3"):
        regime_figure(table, 0.3)


# --- the Snakemake target --------------------------------------------------------------------


def test_dry_run_plans_one_training_per_setting_and_seed(tmp_path):
    workdir = copy_workflow(tmp_path)
    result = run_snakemake(
        workdir, "-n", "-s", "workflow/sweep.smk", "--configfile", "config/sweep.yaml"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    config = yaml.safe_load((REPO / "config" / "sweep.yaml").read_text())
    expected = {
        f"sweep_{setting}_s{seed}"
        for setting in config["sweep"]["settings"]
        for seed in config["sweep"]["seeds"]
    }
    trainings = [
        line.removeprefix("rule ").removesuffix("_train_rl:")
        for line in result.stdout.splitlines()
        if line.startswith("rule ") and line.endswith("_train_rl:")
    ]
    assert sorted(trainings) == sorted(expected)
    for line in ("rule regime_sweep_table:", "rule regime_sweep_figure:"):
        assert result.stdout.count(line) == 1
    # each run keeps its own config and paths
    assert "results/sweep-steps1600-s1/checkpoints/step_1600" in result.stdout
    assert "results/sweep-default-s0/checkpoints/step_800" in result.stdout
    assert "results/sweep-default-s0/checkpoints/step_1600" not in result.stdout


def test_partial_base_config_takes_the_schema_defaults(tmp_path):
    """The main workflow's validation still fills in every key a sweep config leaves out."""
    workdir = copy_workflow(tmp_path)
    config = sweep_config({"lin": {"extrapolate": {"windows": [0.5]}}}, seeds=[3])
    (workdir / "mini.yaml").write_text(yaml.safe_dump(config))
    result = run_snakemake(workdir, "-n", "-s", "workflow/sweep.smk", "--configfile", "mini.yaml")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "rule sweep_lin_s3_train_rl:" in result.stdout
    assert "results/sweep-lin-s3/checkpoints/step_40" in result.stdout
    assert "results/sweep-lin-s3/models/extrap/two-point/w0.5" in result.stdout
    assert "/w0.4" not in result.stdout


def test_aggregation_rules_run_on_the_runs_tables(tmp_path):
    """With every run's outputs in place, the sweep target runs only the aggregation."""
    workdir = copy_workflow(tmp_path)
    config = sweep_config({"plain": {"extrapolate": {"windows": [0.25, 0.4]}}})
    (workdir / "agg.yaml").write_text(yaml.safe_dump(config))
    for seed, gain in ((0, 0.2), (1, 0.4)):
        run = f"sweep-plain-s{seed}"
        write_run_tables(workdir / "results", run, 0.3, 0.3 + gain, 0.8, 0.7, 0.5, 0.9, 1.0, 0.8)
        for name in ("accuracy_vs_step", "rank_ablation", "speedup_vs_accuracy"):
            (workdir / "results" / run / "tables" / f"{name}.md").touch()
        figures = workdir / "results" / run / "figures"
        figures.mkdir()
        for name in (
            "accuracy_vs_step.png",
            "accuracy_vs_step.pdf",
            "rank_ablation.png",
            "rank1_energy_share.png",
            "predictions_vs_step.png",
            "speedup_vs_accuracy.png",
            "linearity.png",
        ):
            (figures / name).touch()
        for name in ("accuracy_vs_step", "rank_ablation", "speedup_vs_accuracy", "linearity"):
            (workdir / "results" / run / "tables" / f"{name}.html").touch()  # the report's views
        for suffix in ("csv", "md", "html"):
            (workdir / "results" / run / "tables" / f"claims.{suffix}").touch()
    result = run_snakemake(workdir, "-s", "workflow/sweep.smk", "--configfile", "agg.yaml", "-c1")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "3 of 3 steps (100%) done" in result.stderr
    out = workdir / "results" / "sweep"
    table = pd.read_csv(out / "tables" / "regime_sweep.csv")
    assert table["gain"].tolist() == pytest.approx([0.2, 0.4])
    summary = pd.read_csv(out / "tables" / "regime_sweep_summary.csv")
    assert summary["gain_mean"].tolist() == pytest.approx([0.3])
    assert (out / "figures" / "regime_sweep.png").stat().st_size > 0


def test_unknown_override_key_stops_the_sweep(tmp_path):
    workdir = copy_workflow(tmp_path)
    config = sweep_config({"kl": {"train.trl.kl_betta": 0.3}})
    (workdir / "bad.yaml").write_text(yaml.safe_dump(config))
    result = run_snakemake(workdir, "-n", "-s", "workflow/sweep.smk", "--configfile", "bad.yaml")
    assert result.returncode != 0
    assert "unknown config key 'train.trl.kl_betta'" in result.stdout + result.stderr
    assert not (workdir / "results").exists()
