"""Every figure draws the data of the tables the workflow writes: one point, line or heatmap cell
per row or module, with the table's values. The tables come from the functions the workflow's
scripts call (``rlpredict.tables``, ``spectral``, ``alpharl``, ``linearity``, ``ablate``,
``sweep``), run on a tiny model with real checkpoints."""

from __future__ import annotations

import html
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from conftest import REPO
from matplotlib.container import ErrorbarContainer
from snakemake.utils import validate
from tiny_models import tiny_model

from rlpredict import figures
from rlpredict.ablate import ablate_model
from rlpredict.alpharl import alpharl_fits
from rlpredict.evaluate import write_json
from rlpredict.linearity import logprob_r2_table, summarize_r2, weight_linearity
from rlpredict.plan import plan_jobs, runnable
from rlpredict.spectral import spectrum_table
from rlpredict.sweep import regime_figure, regime_table, summary_markdown, summary_table
from rlpredict.tables import (
    accuracy_vs_step,
    linearity_summary,
    rank_ablation,
    speedup_vs_accuracy,
    write_table,
)

STEPS = list(range(0, 41, 5))
RANKS = ["1", "4", "full"]
LAYERS = 2
MODULES = 7  # q, k, v, o, gate, up, down per layer


# --- what a figure drew --------------------------------------------------------------------


def errorbar_series(ax) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """(x, y) of every errorbar series of ``ax``, by legend label."""
    return {
        c.get_label(): (np.asarray(c.lines[0].get_xdata()), np.asarray(c.lines[0].get_ydata()))
        for c in ax.containers
        if isinstance(c, ErrorbarContainer)
    }


def labelled_lines(ax) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """(x, y) of every plain line with a legend label (errorbar series and helpers excluded)."""
    in_errorbars = {id(c.lines[0]) for c in ax.containers if isinstance(c, ErrorbarContainer)}
    return {
        line.get_label(): (np.asarray(line.get_xdata()), np.asarray(line.get_ydata()))
        for line in ax.get_lines()
        if not line.get_label().startswith("_") and id(line) not in in_errorbars
    }


def heatmap(ax) -> np.ndarray:
    """The cell values of the one image on ``ax`` (NaN where blank)."""
    (image,) = ax.images
    return np.ma.filled(np.ma.asarray(image.get_array(), dtype=float), np.nan)


def histogram_count(ax) -> int:
    """How many values the histogram bars of ``ax`` hold."""
    return int(round(sum(patch.get_height() for patch in ax.patches)))


def tick_labels(ax, axis: str = "x") -> list[str]:
    ticks = ax.get_xticklabels() if axis == "x" else ax.get_yticklabels()
    return [t.get_text() for t in ticks]


def check_linearity_figure(fig, weights, logprobs, rank1, summary) -> None:
    """The linearity figure holds every R² of its three tables (shared with the e2e test)."""
    hist_w, hist_lp, heat = fig.axes[:3]
    assert histogram_count(hist_w) == weights["r2"].notna().sum()
    assert histogram_count(hist_lp) == logprobs["r2"].notna().sum()
    cells = heatmap(heat)
    modules = summary.set_index(["what", "statistic"]).loc[
        ("rank-1 (PLS vs dev accuracy)", "modules"), "value"
    ]
    assert np.isfinite(cells).sum() == int(modules) == rank1["r2"].notna().sum() > 0
    grid = rank1.pivot(index="layer", columns="module", values="r2")
    shown = pd.DataFrame(cells, index=grid.index, columns=tick_labels(heat))
    assert sorted(shown.columns) == sorted(grid.columns)
    assert np.allclose(shown[grid.columns].to_numpy(), grid.to_numpy(), equal_nan=True)


def check_energy_share_figure(fig, spectra) -> None:
    """One median line per source over every step, one heatmap cell per final-step matrix."""
    sources = list(dict.fromkeys(spectra["source"]))
    lines = labelled_lines(fig.axes[0])
    for source, heat in zip(sources, fig.axes[1 : 1 + len(sources)], strict=True):
        part = spectra[spectra["source"] == source]
        medians = part.groupby("step")["energy_share_1"].median()
        assert np.allclose(lines[source.upper()][1], medians.to_numpy())
        final = part[part["step"] == part["step"].max()]
        cells = heatmap(heat)
        assert np.isfinite(cells).sum() == final["energy_share_1"].notna().sum() > 0
        assert sorted(cells[np.isfinite(cells)]) == pytest.approx(
            sorted(final["energy_share_1"].dropna())
        )


# --- a tiny run with real checkpoints and the tables the workflow derives from it ------------


def save_run(root: Path, source: str, seed: int) -> dict[int, Path]:
    """Checkpoints step_0..step_40 of a tiny Qwen2: a rank-1 drift plus noise per step."""
    model = tiny_model(seed=0)
    dirs = {0: root / "step_0"}
    if not dirs[0].exists():
        model.save_pretrained(dirs[0])
    gen = torch.Generator().manual_seed(seed)
    params = {n: p for n, p in model.named_parameters() if p.ndim == 2 and "layers" in n}
    drift = {
        n: torch.outer(
            torch.randn(p.shape[0], generator=gen), torch.randn(p.shape[1], generator=gen)
        )
        for n, p in params.items()
    }
    with torch.no_grad():
        for step in STEPS[1:]:
            for name, p in params.items():
                p.add_(1e-3 * drift[name] + 2e-4 * torch.randn(p.shape, generator=gen))
            dirs[step] = root / source / f"step_{step}"
            model.save_pretrained(dirs[step])
    return dirs


def eval_file(root: Path, name: str, accuracy: float, n: int = 200) -> Path:
    path = root / "eval" / f"{name}.json"
    stderr = math.sqrt(accuracy * (1 - accuracy) / n)
    write_json({"accuracy": accuracy, "accuracy_stderr": stderr, "n": n}, path)
    return path


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """The workflow's tables on a tiny run: accuracy, rank ablation, spectra, speedup,
    linearity (weights, log-probs, rank-1 PLS) and their summary."""
    root = tmp_path_factory.mktemp("run")
    torch.set_num_threads(1)
    rl = save_run(root, "rl", seed=1)
    sft = save_run(root, "sft", seed=2)
    accuracies = {s: 0.30 + 0.005 * s for s in STEPS}
    accuracy = accuracy_vs_step({s: eval_file(root, f"step_{s}", a) for s, a in accuracies.items()})

    spectra = pd.concat(
        [
            spectrum_table(rl[0], dirs[s], k=4, step=s, progress=False).assign(source=source)
            for source, dirs in (("rl", rl), ("sft", sft))
            for s in STEPS[1:]
        ],
        ignore_index=True,
    )

    evals, stats = {}, {}
    for source, dirs in (("rl", rl), ("sft", sft)):
        for i, rank in enumerate(RANKS):
            key = f"{source}/{rank}"
            out = root / "ablate" / source / f"rank{rank}"
            result = ablate_model(dirs[0], dirs[40], out, rank, progress=False, device="cpu")
            stats[key] = root / "ablate" / f"{source}_rank{rank}.json"
            write_json(result, stats[key])
            evals[key] = eval_file(root, f"ablate_{source}_{rank}", 0.32 + 0.07 * i)
    finals = {"rl": eval_file(root, "step_40", 0.50), "sft": eval_file(root, "sft_40", 0.33)}
    ablation = rank_ablation(evals, finals, eval_file(root, "step_0", 0.30), stats)

    steps = np.arange(0, 41, 5)
    history = pd.DataFrame(
        {"step": steps, "reward": np.linspace(0.2, 0.6, len(steps)), "train_seconds": 10.0 * steps}
    )
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    validate(config, str(REPO / "workflow" / "schemas" / "config.schema.yaml"))  # its defaults
    settings = config["extrapolate"]
    jobs = plan_jobs(STEPS, settings)
    bench = root / "bench.tsv"
    bench.write_text("s\tmax_rss\n12.5\t100\n")
    job_evals = {
        job.model_id: eval_file(root, job.model_id.replace("/", "_"), 0.31 + 0.01 * i)
        for i, job in enumerate(runnable(jobs))
    }
    job_evals.update({f"step_{s}": eval_file(root, f"step_{s}", a) for s, a in accuracies.items()})
    speedup = speedup_vs_accuracy(
        jobs,
        job_evals,
        final=job_evals["step_40"],
        base=job_evals["step_0"],
        history=history,
        final_step=40,
        costs={job.model_id: [bench] for job in runnable(jobs)},
    )

    weights, weights_summary = weight_linearity(rl, min_samples=20, seed=0)
    gen = np.random.default_rng(0)
    x = np.asarray(STEPS, dtype=float)[:, None]
    trajectories = -2.0 + 0.05 * x * gen.normal(size=(1, 60)) + gen.normal(size=(len(STEPS), 60))
    trajectories[:, :5] = -1.0 + 0.02 * x  # exactly linear tokens: R² = 1 up to rounding
    tokens = pd.DataFrame({"probe": np.arange(60) // 6, "position": np.arange(60) % 6})
    logprobs = logprob_r2_table(STEPS, trajectories, tokens)
    logprobs_summary = summarize_r2(logprobs["r2"])
    logprobs_summary["n_kept"] = logprobs_summary.pop("n")
    rank1 = alpharl_fits(
        rl, {s: a for s, a in accuracies.items() if s > 0}, scale="frobenius", progress=False
    )
    summary = linearity_summary(weights_summary, logprobs_summary, rank1)
    return {
        "root": root,
        "accuracy": accuracy,
        "history": history,
        "spectra": spectra,
        "ablation": ablation,
        "speedup": speedup,
        "weights": weights,
        "logprobs": logprobs,
        "rank1": rank1,
        "summary": summary,
    }


# --- one test per figure -------------------------------------------------------------------


def test_accuracy_figure_draws_every_checkpoint_and_the_reward(run):
    table, history = run["accuracy"], run["history"]
    fig = figures.accuracy_vs_step(table, history, "tiny", "exact match")
    x, y = errorbar_series(fig.axes[0])["checkpoint (test split)"]
    assert x.tolist() == table["step"].tolist()
    assert y.tolist() == pytest.approx(table["accuracy"].tolist())
    reward = [line for line in fig.axes[1].get_lines() if len(line.get_ydata()) > 2]
    assert len(reward) == 1
    assert list(reward[0].get_ydata()) == pytest.approx(history["reward"].tolist())


def test_rank_ablation_figure_draws_every_source_and_rank(run):
    table = run["ablation"]
    fig = figures.rank_ablation(table, "tiny")
    relative = errorbar_series(fig.axes[0])
    gain = labelled_lines(fig.axes[1])
    assert set(relative) == set(gain) == {"RL (GRPO)", "SFT control"}
    for source, label in (("rl", "RL (GRPO)"), ("sft", "SFT control")):
        part = table[table["source"] == source]
        assert len(relative[label][1]) == len(part) == len(RANKS)
        assert relative[label][1].tolist() == pytest.approx(part["relative_accuracy"].tolist())
        assert gain[label][1].tolist() == pytest.approx(part["gain_recovered"].tolist())
    assert tick_labels(fig.axes[0]) == ["1", "4", "full"]


def test_energy_share_figure_has_a_cell_for_every_matrix(run):
    spectra = run["spectra"]
    assert len(spectra[(spectra["source"] == "rl") & (spectra["step"] == 40)]) == LAYERS * MODULES
    check_energy_share_figure(figures.rank1_energy_share(spectra, "tiny"), spectra)


def test_predictions_figure_draws_every_prediction_that_ran(run):
    steps, table = run["accuracy"], run["speedup"]
    fig = figures.predictions_vs_step(steps, table, "tiny")
    ax = fig.axes[0]
    assert labelled_lines(ax)["RL checkpoints"][1].tolist() == steps["accuracy"].tolist()
    ran = table.dropna(subset=["accuracy"])
    assert table["accuracy"].isna().any() and len(ran) > 10  # skipped rows drawn as nothing
    series = errorbar_series(ax)
    assert set(series) == set(ran["method"])
    assert sum(len(y) for _, y in series.values()) == len(ran)
    for method, (_, y) in series.items():
        assert y.tolist() == ran.loc[ran["method"] == method, "accuracy"].tolist()


def test_speedup_figure_draws_every_method_in_both_panels(run):
    table = run["speedup"]
    ran = table.dropna(subset=["accuracy"])
    fig = figures.speedup_vs_accuracy(table, "tiny")
    for ax, column in zip(fig.axes, ("rl_step_speedup", "cost_aware_speedup"), strict=True):
        lines = labelled_lines(ax)
        for method, part in ran.groupby("method"):
            part = part.sort_values(column)
            assert lines[method][0].tolist() == pytest.approx(part[column].tolist())
            assert lines[method][1].tolist() == pytest.approx(part["relative_accuracy"].tolist())
        assert len(lines["stop at window"][1]) == ran["window"].nunique()
        assert len(lines) == ran["method"].nunique() + 1


def test_linearity_figure_draws_every_module_the_analysis_fits(run):
    """The rank-1 panel was empty: the analysis names modules ``self_attn.q_proj``."""
    rank1 = run["rank1"]
    assert rank1["module"].str.startswith(("self_attn.", "mlp.")).all()
    assert len(rank1) == LAYERS * MODULES
    fig = figures.linearity(run["weights"], run["logprobs"], rank1, "tiny")
    check_linearity_figure(fig, run["weights"], run["logprobs"], rank1, run["summary"])
    assert run["logprobs"]["r2"].max() >= 1.0 - 1e-12  # rounding above 1 still counted


def test_heatmap_keeps_modules_of_any_name_and_tensors_outside_layers():
    table = pd.DataFrame(
        {
            "layer": pd.array([0, 0, 0, 1, 1, 1, None], dtype="Int64"),
            "module": ["mlp.fc1", "self_attn.q_proj", "mlp.down_proj"] * 2 + ["embed_tokens"],
            "r2": [0.1, 0.2, float("nan"), 0.4, 0.5, float("nan"), 0.7],
        }
    )
    grid = figures.layer_module_grid(table, "module", "r2")
    assert list(grid.columns) == ["self_attn.q_proj", "mlp.down_proj", "mlp.fc1", "embed_tokens"]
    assert grid.shape == (3, 4)  # layers 0, 1 and the tensors outside them
    assert np.isfinite(grid.to_numpy(dtype=float)).sum() == table["r2"].notna().sum()


def regime_runs(run, root: Path) -> list[dict]:
    """Two settings × two seeds of per-run tables written as the workflow writes them."""
    runs = []
    for setting, seed, shift in (("a", 0, 0.0), ("a", 1, 0.02), ("b", 0, -0.05), ("b", 1, 0.01)):
        name = f"sweep-{setting}-s{seed}"
        tables = {}
        for table_name, key in (
            ("accuracy_vs_step", "accuracy"),
            ("rank_ablation", "ablation"),
            ("speedup_vs_accuracy", "speedup"),
            ("linearity", "summary"),
        ):
            table = run[key].copy()
            if key == "speedup":
                table["relative_accuracy"] += shift
            csv = root / name / "tables" / f"{table_name}.csv"
            write_table(table, csv, csv.with_suffix(".md"))
            tables[table_name] = str(csv)
        runs.append(
            {"setting": setting, "seed": seed, "run": name, "overrides": "", "tables": tables}
        )
    return runs


def test_regime_figure_draws_every_method_and_setting(run, tmp_path):
    table = regime_table(regime_runs(run, tmp_path))
    fig = regime_figure(table, 0.4)
    ax = fig.axes[0]
    series = errorbar_series(ax)
    methods = ["stop"] + list(dict.fromkeys(run["speedup"].query("window == 0.4")["method"]))
    assert list(series) == [m for m in methods if f"rel_{m}_w0.4" in table.columns]
    assert len(series) >= 8
    for method, (_, y) in series.items():
        means = table.groupby("setting", sort=False)[f"rel_{method}_w0.4"].mean()
        assert y.tolist() == pytest.approx(means.tolist(), nan_ok=True)
    seed_dots = [line for line in ax.get_lines() if line.get_marker() == "."]
    assert sum(len(line.get_ydata()) for line in seed_dots) == len(series) * len(table)


# --- the report's view of a table ----------------------------------------------------------


def test_table_html_shows_every_cell(run, tmp_path):
    table = run["speedup"]
    path = tmp_path / "view" / "speedup.html"
    figures.save_table_html(table, "tiny: <speedup>", path)
    page = path.read_text(encoding="utf-8")
    assert "<script" not in page and "&lt;speedup&gt;" in page
    cells = table.astype(object).map(figures.format_cell)
    for value in cells.to_numpy().ravel():
        assert html.escape(value) in page
    assert page.count("<tr") == len(table) + 1
    assert not list(path.parent.glob(".*tmp"))


def test_table_html_sections_keep_their_order(run, tmp_path):
    summary = summary_table(regime_table(regime_runs(run, tmp_path)))
    sections = {"Per setting": summary_markdown(summary), "Per run": summary}
    page = figures.table_html(sections, "sweep")
    assert page.index("<h3>Per setting</h3>") < page.index("<h3>Per run</h3>")
    assert page.count("<table") == 2
    assert " ± " in page


@pytest.mark.parametrize(
    ("value", "shown"),
    [(0.123456, "0.1235"), (np.float32(0.5), "0.5"), (float("nan"), "–"), (None, "–"), (3, "3")],
)
def test_format_cell(value, shown):
    assert figures.format_cell(value) == shown


def test_layer_axis_of_a_deep_model_labels_every_other_layer_and_the_rest():
    from rlpredict.figures import layer_ticks

    positions, labels = layer_ticks([*map(float, range(30)), float("nan")])
    assert len(labels) <= 17
    assert labels[:3] == ["0", "2", "4"] and positions[:3] == [0, 2, 4]
    assert (positions[-1], labels[-1]) == (30, "other")
    assert layer_ticks([0, 1, 2]) == ([0, 1, 2], ["0", "1", "2"])
