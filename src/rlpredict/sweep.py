"""The regime sweep: expand ``config/sweep.yaml`` into one run config per (setting, seed), and
aggregate the runs' tables into ``regime_sweep.{csv,md}`` with a per-setting summary and a
figure. Pure functions over configs and the per-run CSVs."""

from __future__ import annotations

import copy
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import yaml

from rlpredict.atomic import atomic_write_text

SETTING_NAME = re.compile(r"^[A-Za-z0-9_]+$")
PER_RUN_KEYS = ("run", "seed")  # set by the sweep for every run, never by a setting
SWEEP_KEYS = {"seeds", "settings", "figure_window"}
TABLES = ("accuracy_vs_step", "linearity", "rank_ablation", "speedup_vs_accuracy")
ID_COLUMNS = ["setting", "seed", "run", "overrides"]


@dataclass(frozen=True)
class SweepRun:
    setting: str
    seed: int
    overrides: dict = field(compare=False)  # dotted key → value
    config: dict = field(compare=False)  # the run's complete config (before schema defaults)

    @property
    def run(self) -> str:
        """Run name: outputs go to ``results/{run}/``."""
        return run_name(self.setting, self.seed)

    @property
    def module(self) -> str:
        """A Python identifier naming the run's Snakemake module (prefix of its rule names)."""
        return f"sweep_{self.setting}_s{self.seed}"


def run_name(setting: str, seed: int) -> str:
    return f"sweep-{setting}-s{seed}"


def load_schema(path: str | Path) -> dict:
    return yaml.safe_load(Path(path).read_text())


def _schema_node(schema: dict, dotted: str) -> dict | None:
    node = schema
    for part in dotted.split("."):
        node = node.get("properties", {}).get(part)
        if node is None:
            return None
    return node


def flatten_overrides(overrides: Mapping, schema: dict, prefix: str = "") -> dict:
    """Dotted keys → values; a nested mapping under a config section is flattened into it."""
    flat = {}
    for key, value in overrides.items():
        dotted = f"{prefix}{key}"
        node = _schema_node(schema, dotted)
        if node is None:
            raise ValueError(f"unknown config key '{dotted}'")
        if isinstance(value, Mapping) and "properties" in node:
            flat.update(flatten_overrides(value, schema, f"{dotted}."))
        else:
            flat[dotted] = value
    return flat


def apply_overrides(base: Mapping, overrides: Mapping) -> dict:
    """A deep copy of ``base`` with each dotted key set (missing sections are created)."""
    merged = copy.deepcopy(dict(base))
    for dotted, value in overrides.items():
        *parents, leaf = dotted.split(".")
        node = merged
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = copy.deepcopy(value)
    return merged


def config_problem(config: Mapping, schema: dict) -> str | None:
    """The first schema violation of a run config as ``dotted.key: message``, or None. Does
    not fill in defaults (the workflow's own validation does)."""
    from jsonschema import Draft202012Validator

    errors = sorted(
        Draft202012Validator(schema).iter_errors(copy.deepcopy(dict(config))),
        key=lambda e: list(e.absolute_path),
    )
    if not errors:
        return None
    err = errors[0]
    where = ".".join(str(p) for p in err.absolute_path) or "(top level)"
    return f"{where}: {err.message}"


def expand_sweep(config: Mapping, schema: dict) -> list[SweepRun]:
    """One run per (setting, seed) from a sweep config: the base config (every top-level key
    but ``sweep``) with the setting's overrides, ``run`` and ``seed`` applied. Every problem
    is a ValueError naming the setting and the key."""
    if "sweep" not in config:
        raise ValueError(
            "no 'sweep' section (settings and seeds); pass --configfile config/sweep.yaml"
        )
    sweep = config["sweep"] or {}
    unknown = sorted(set(sweep) - SWEEP_KEYS)
    if unknown:
        raise ValueError(
            f"sweep: unknown key(s) {', '.join(unknown)} (known: {', '.join(sorted(SWEEP_KEYS))})"
        )
    base = {key: value for key, value in config.items() if key != "sweep"}
    for key in PER_RUN_KEYS:
        if key in base:
            raise ValueError(
                f"sweep config: top-level '{key}' is set per run (run sweep-<setting>-s<seed>, "
                "seed from sweep.seeds); remove it"
            )
    seeds = check_seeds(sweep.get("seeds", [0, 1]), "sweep.seeds")
    settings = sweep.get("settings")
    if not isinstance(settings, Mapping) or not settings:
        raise ValueError("sweep.settings: expected a mapping of setting name → overrides")
    runs = []
    for name, overrides in settings.items():
        if not isinstance(name, str) or not SETTING_NAME.match(name):
            raise ValueError(
                f"sweep.settings: setting name {name!r} must be letters, digits and underscores"
            )
        overrides = overrides or {}
        if not isinstance(overrides, Mapping):
            raise ValueError(f"sweep.settings.{name}: expected a mapping of config key → value")
        overrides = dict(overrides)
        setting_seeds = seeds
        if "seeds" in overrides:  # not a config key: this setting's own seeds
            setting_seeds = check_seeds(overrides.pop("seeds"), f"sweep.settings.{name}.seeds")
        try:
            flat = flatten_overrides(overrides, schema)
        except ValueError as err:
            raise ValueError(f"sweep.settings.{name}: {err}") from None
        for key in PER_RUN_KEYS:
            if key in flat:
                raise ValueError(f"sweep.settings.{name}: '{key}' is set per run, not by a setting")
        for seed in setting_seeds:
            run_config = apply_overrides(base, flat)
            run_config.update(run=run_name(name, seed), seed=seed)
            problem = config_problem(run_config, schema)
            if problem:
                raise ValueError(f"sweep.settings.{name} (run {run_name(name, seed)}): {problem}")
            runs.append(SweepRun(name, seed, flat, run_config))
    return runs


def check_seeds(seeds: object, where: str) -> list[int]:
    if (
        not isinstance(seeds, list)
        or not seeds
        or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds)
    ):
        raise ValueError(f"{where}: expected a non-empty list of integers, got {seeds!r}")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"{where}: repeated seed in {seeds!r}")
    return seeds


def describe_overrides(overrides: Mapping) -> str:
    """``key=value; key=value`` (empty for the base config)."""
    return "; ".join(f"{key}={value}" for key, value in overrides.items())


def run_tables(run: str, outputs: Iterable[str]) -> dict[str, str | None]:
    """Table name → the run's CSV, None where the run's config turns that stage off (the
    table is not among the run's ``outputs``)."""
    outputs = set(outputs)
    paths = {name: f"results/{run}/tables/{name}.csv" for name in TABLES}
    return {name: path if path in outputs else None for name, path in paths.items()}


# --- aggregation -----------------------------------------------------------------------------


def _fmt_window(window: float) -> str:
    return f"{float(window):g}"


def _stat(linearity: pd.DataFrame, what: str, statistic: str) -> float:
    hit = linearity[(linearity["what"] == what) & (linearity["statistic"] == statistic)]
    return float(hit["value"].iloc[0]) if len(hit) else math.nan


def run_row(tables: Mapping[str, str | Path | None]) -> dict:
    """The sweep's numbers for one run from its tables (a missing table gives no columns):
    base and final test accuracy and the gain (accuracy_vs_step), the linearity diagnostics,
    rank-1 ablation of the RL update (relative accuracy, σ₁² share), and per extrapolation
    method and window the relative accuracy (``rel_{method}_w{window}``), beside the
    relative accuracy of stopping at the window (``rel_stop_w{window}``)."""
    row: dict = {}
    if tables.get("accuracy_vs_step"):
        acc = pd.read_csv(tables["accuracy_vs_step"]).sort_values("step")
        base, final = float(acc["accuracy"].iloc[0]), float(acc["accuracy"].iloc[-1])
        row.update(
            final_step=int(acc["step"].iloc[-1]),
            base_accuracy=base,
            final_accuracy=final,
            gain=final - base,
        )
    if tables.get("linearity"):
        lin = pd.read_csv(tables["linearity"])
        row.update(
            weight_r2_median=_stat(lin, "weights", "median R²"),
            weight_r2_frac_gt_0_7=_stat(lin, "weights", "fraction R² > 0.7"),
            logprob_r2_median=_stat(lin, "token log-probs", "median R²"),
            rank1_pls_r2_median=_stat(lin, "rank-1 (PLS vs dev accuracy)", "median R²"),
        )
    if tables.get("rank_ablation"):
        abl = pd.read_csv(tables["rank_ablation"], dtype={"rank": str})
        rank1 = abl[(abl["source"] == "rl") & (abl["rank"] == "1")]
        row["rank1_relative_accuracy"] = (
            float(rank1["relative_accuracy"].iloc[0]) if len(rank1) else math.nan
        )
        row["rank1_energy_share"] = (
            float(rank1["rank1_energy_share_median"].iloc[0]) if len(rank1) else math.nan
        )
    if tables.get("speedup_vs_accuracy"):
        speed = pd.read_csv(tables["speedup_vs_accuracy"])
        speed = speed[speed["method"] != "all"]  # a window with no checkpoint
        if "relative_accuracy" not in speed:
            speed = speed.assign(relative_accuracy=math.nan, stop_relative_accuracy=math.nan)
        for window in sorted(speed["window"].unique()):
            at = speed[speed["window"] == window]
            stops = at["stop_relative_accuracy"].dropna()
            row[f"rel_stop_w{_fmt_window(window)}"] = (
                float(stops.iloc[0]) if len(stops) else math.nan
            )
            for method, rel in zip(at["method"], at["relative_accuracy"], strict=True):
                row[f"rel_{method}_w{_fmt_window(window)}"] = float(rel)
    return row


def regime_table(runs: Iterable[Mapping]) -> pd.DataFrame:
    """One row per run; each item of ``runs`` has setting, seed, run, overrides and tables
    (table name → CSV path or None)."""
    rows = [
        {
            "setting": item["setting"],
            "seed": int(item["seed"]),
            "run": item["run"],
            "overrides": item["overrides"],
            **run_row(item["tables"]),
        }
        for item in runs
    ]
    table = pd.DataFrame(rows)
    extrap = [c for c in table.columns if c.startswith("rel_")]
    other = [c for c in table.columns if c not in ID_COLUMNS and c not in extrap]
    return table[ID_COLUMNS + other + extrap]


def summary_table(table: pd.DataFrame) -> pd.DataFrame:
    """Per setting (in order of first appearance): seeds, and the mean and sample standard
    deviation over seeds of every numeric column (``{col}_mean``, ``{col}_sd``)."""
    numeric = [
        c
        for c in table.columns
        if c not in ID_COLUMNS and c != "final_step" and pd.api.types.is_numeric_dtype(table[c])
    ]
    order = list(dict.fromkeys(table["setting"]))
    grouped = table.groupby("setting", sort=False)
    summary = pd.DataFrame({"setting": order})
    summary["seeds"] = [len(grouped.get_group(s)) for s in order]
    summary["overrides"] = [grouped.get_group(s)["overrides"].iloc[0] for s in order]
    for col in numeric:
        summary[f"{col}_mean"] = [grouped.get_group(s)[col].mean() for s in order]
        summary[f"{col}_sd"] = [grouped.get_group(s)[col].std(ddof=1) for s in order]
    return summary


def _mean_sd(mean: float, sd: float) -> str:
    if pd.isna(mean):
        return ""
    return f"{mean:.3f}" if pd.isna(sd) else f"{mean:.3f} ± {sd:.3f}"


def summary_markdown(summary: pd.DataFrame) -> pd.DataFrame:
    """The summary with each statistic as one ``mean ± sd`` column, for people."""
    cols = [c[: -len("_mean")] for c in summary.columns if c.endswith("_mean")]
    shown = summary[["setting", "seeds"]].copy()
    for col in cols:
        shown[col] = [
            _mean_sd(m, s)
            for m, s in zip(summary[f"{col}_mean"], summary[f"{col}_sd"], strict=True)
        ]
    return shown


def write_sweep_tables(
    table: pd.DataFrame, summary: pd.DataFrame, csv: str | Path, summary_csv: str | Path, md: str
) -> None:
    """Per-run CSV, summary CSV, and one Markdown file with both (summary first)."""
    texts = {
        Path(csv): table.to_csv(index=False),
        Path(summary_csv): summary.to_csv(index=False),
        Path(md): "\n".join(
            [
                "# Regime sweep",
                "",
                "Relative accuracy = accuracy / the run's final checkpoint's accuracy; "
                "`rel_{method}_w{window}` is the prediction from that window, "
                "`rel_stop_w{window}` stopping at the window's last checkpoint.",
                "",
                "## Per setting (mean ± sd over seeds)",
                "",
                summary_markdown(summary).to_markdown(index=False),
                "",
                "## Settings",
                "",
                summary[["setting", "overrides"]].to_markdown(index=False),
                "",
                "## Per run",
                "",
                table.drop(columns=["overrides"]).to_markdown(index=False, floatfmt=".3f"),
                "",
            ]
        ),
    }
    for path, text in texts.items():
        atomic_write_text(path, text)


def window_methods(table: pd.DataFrame, window: float) -> list[str]:
    """Methods (plus ``stop``) with a relative accuracy column at ``window``."""
    suffix = f"_w{_fmt_window(window)}"
    return [
        c[len("rel_") : -len(suffix)]
        for c in table.columns
        if c.startswith("rel_") and c.endswith(suffix)
    ]


def regime_figure(table: pd.DataFrame, window: float):
    """Relative accuracy at one window per method (markers) across settings (x): the mean over
    seeds with ±1 sd, each seed as a small dot; 1.0 is the final checkpoint."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from rlpredict.figures import MARKERS

    methods = window_methods(table, window)
    if not methods:
        raise ValueError(
            f"regime sweep figure: no relative accuracy at window {_fmt_window(window)} in the "
            "runs' speedup tables (sweep.figure_window must be one of extrapolate.windows)"
        )
    settings = list(dict.fromkeys(table["setting"]))
    fig, ax = plt.subplots(figsize=(max(6.4, 1.1 * len(settings) + 4.0), 4.2))
    width = 0.8 / len(methods)
    for i, method in enumerate(methods):
        col = f"rel_{method}_w{_fmt_window(window)}"
        x0 = [k - 0.4 + width * (i + 0.5) for k in range(len(settings))]
        groups = [table.loc[table["setting"] == s, col] for s in settings]
        means = [g.mean() for g in groups]
        sds = [g.std(ddof=1) if g.count() > 1 else 0.0 for g in groups]
        style = {"color": "k", "marker": "x"} if method == "stop" else {}
        marker = style.get("marker", MARKERS[i % len(MARKERS)])
        bar = ax.errorbar(
            x0, means, yerr=sds, fmt=marker, capsize=2, label=method, color=style.get("color")
        )
        for x, g in zip(x0, groups, strict=True):
            ax.plot([x] * len(g), g, ".", ms=3, color=bar[0].get_color(), alpha=0.6)
    ax.axhline(1.0, color="k", lw=0.8, ls="--")
    ax.set_xlim(-0.5, len(settings) - 0.5)
    ax.set_xticks(range(len(settings)), settings, rotation=30, ha="right")
    ax.set_ylabel("relative accuracy (prediction / final checkpoint)")
    ax.set_title(
        f"Extrapolation from window {_fmt_window(window)} across regimes "
        "(mean ± sd over seeds; dots: seeds)"
    )
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    return fig
