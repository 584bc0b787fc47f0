"""The real DAG on config/smoke.yaml: real TRL training, real lm-eval, real outputs."""

import base64
import html
import json
import os
import re
import signal
import subprocess
import time

import pandas as pd
import pytest
import torch
import yaml
from conftest import REPO, run_snakemake, snakemake_bin
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from rlpredict.model import greedy_accuracy
from rlpredict.tasks.arithmetic import load_split

pytestmark = pytest.mark.e2e

CONFIG = yaml.safe_load((REPO / "config" / "smoke.yaml").read_text())
STEPS = list(range(0, CONFIG["train"]["steps"] + 1, CONFIG["train"]["save_every"]))


def results(workdir):
    return workdir / "results" / CONFIG["run"]


def test_accuracy_table_covers_every_checkpoint(smoke_run):
    table = pd.read_csv(results(smoke_run) / "tables" / "accuracy_vs_step.csv")
    assert table["step"].tolist() == STEPS
    assert table["accuracy"].between(0, 1).all()
    assert table["n"].eq(CONFIG["task"]["test_size"]).all()
    assert 0.1 <= table["accuracy"].iloc[0] <= 0.7  # the warm-up leaves partial accuracy
    assert table["relative_accuracy"].iloc[-1] == pytest.approx(1.0)
    md = (results(smoke_run) / "tables" / "accuracy_vs_step.md").read_text()
    assert md.count("\n") >= len(STEPS) + 2


def test_lm_eval_agrees_with_a_direct_greedy_evaluation(smoke_run):
    """lm-eval's exact match must equal our own decoding + verifier on the same checkpoint."""
    final = results(smoke_run) / "checkpoints" / f"step_{STEPS[-1]}"
    reported = json.loads((results(smoke_run) / "eval" / f"step_{STEPS[-1]}.json").read_text())
    model = AutoModelForCausalLM.from_pretrained(final)
    tokenizer = AutoTokenizer.from_pretrained(final)
    rows = load_split(results(smoke_run) / "data" / "test.jsonl")
    assert reported["accuracy"] == pytest.approx(greedy_accuracy(model, tokenizer, rows, 6))
    assert reported["n"] == len(rows)


def test_checkpoints_are_fp32_and_step_0_is_the_base(smoke_run):
    ckpts = results(smoke_run) / "checkpoints"
    assert sorted(int(p.name.split("_")[1]) for p in ckpts.iterdir()) == STEPS
    base = load_file(results(smoke_run) / "base" / "model.safetensors")
    step0 = load_file(ckpts / "step_0" / "model.safetensors")
    final = load_file(ckpts / f"step_{STEPS[-1]}" / "model.safetensors")
    assert base.keys() == step0.keys() == final.keys()
    assert all(t.dtype == torch.float32 for t in final.values())
    assert all(torch.equal(base[k], step0[k]) for k in base)
    moved = [k for k in base if not torch.equal(base[k], final[k])]
    assert len(moved) > len(base) // 2  # RL changed most tensors


def test_every_rule_has_log_and_benchmark(smoke_run):
    out = results(smoke_run)
    for rule in ("make_data", "base_model", "train_rl", "accuracy_table", "accuracy_figure"):
        assert (out / "logs" / f"{rule}.log").exists(), rule
        bench = pd.read_csv(out / "benchmarks" / f"{rule}.tsv", sep="\t")
        assert {"s", "max_rss", "cpu_time"} <= set(bench.columns), rule
    assert "warm-up" in (out / "logs" / "base_model.log").read_text()
    history = pd.read_csv(out / "analysis" / "train_history.csv")
    assert history["step"].max() == STEPS[-1]
    assert history["reward"].between(0, 1).all()


def test_figures_are_images(smoke_run):
    figs = results(smoke_run) / "figures"
    assert (figs / "accuracy_vs_step.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (figs / "accuracy_vs_step.pdf").read_bytes()[:5] == b"%PDF-"


def test_second_run_has_nothing_to_do(smoke_run):
    result = run_snakemake(smoke_run, "-n", "--configfile", "config/smoke.yaml")
    assert result.returncode == 0, result.stderr
    assert "Nothing to be done" in result.stdout + result.stderr


def test_report_renders(smoke_run):
    report = results(smoke_run) / "report.html"
    result = run_snakemake(smoke_run, "--configfile", "config/smoke.yaml", "--report", str(report))
    assert result.returncode == 0, result.stderr[-3000:]
    assert report.stat().st_size > 10_000


def test_rank_ablation_table_contrasts_rl_and_sft(smoke_run):
    table = pd.read_csv(results(smoke_run) / "tables" / "rank_ablation.csv", dtype={"rank": str})
    ranks = [str(r) for r in CONFIG["ablate"]["ranks"] if r != "full"]
    expected = ranks + [f"{p}pct" for p in CONFIG["ablate"]["rank_percents"]] + ["full"]
    for source in ("rl", "sft"):
        part = table[table["source"] == source]
        assert part["rank"].tolist() == expected
        final = json.loads(
            (
                results(smoke_run)
                / "eval"
                / (f"step_{STEPS[-1]}.json" if source == "rl" else f"sft/step_{STEPS[-1]}.json")
            ).read_text()
        )["accuracy"]
        assert part["final_accuracy"].eq(final).all()
        assert part["relative_accuracy"].tolist() == pytest.approx(
            (part["accuracy"] / final).tolist()
        )
        kept = part.set_index("rank")["energy_kept_median"]
        assert kept["1"] < kept[expected[-2]] <= kept["full"] == pytest.approx(1.0)
    spectrum = pd.read_parquet(
        results(smoke_run) / "analysis" / "spectrum" / "rl" / f"step_{STEPS[-1]}.parquet"
    )
    assert len(spectrum) == 7 * CONFIG["model"]["num_layers"]
    assert spectrum["energy_share_1"].between(0, 1).all()


def test_speedup_table_has_every_method_and_labels_the_oracle(smoke_run):
    table = pd.read_csv(results(smoke_run) / "tables" / "speedup_vs_accuracy.csv")
    methods = set(table["method"])
    assert {"two-point", "lstsq-free", "relex", "alpharl-forecast", "alpharl-oracle", "logits"} <= (
        methods
    )
    ran = table.dropna(subset=["accuracy"])
    assert ran["accuracy"].between(0, 1).all()
    assert (ran["rl_step_speedup"] > 1).all()
    assert (ran["cost_aware_speedup"] <= ran["rl_step_speedup"] + 1e-9).all()
    oracle = table[table["method"] == "alpharl-oracle"]
    assert oracle["uses_final_result"].all() and oracle["note"].str.contains("oracle").all()
    assert not table[table["method"] == "alpharl-forecast"]["uses_final_result"].any()
    for name in ("predictions_vs_step.png", "speedup_vs_accuracy.png", "linearity.png"):
        assert (results(smoke_run) / "figures" / name).stat().st_size > 10_000


def test_linearity_table(smoke_run):
    table = pd.read_csv(results(smoke_run) / "tables" / "linearity.csv")
    medians = table[table["statistic"] == "median R²"].set_index("what")["value"]
    assert medians.between(0, 1).all()
    assert len(medians) == 3


def test_truncated_checkpoint_stops_evaluation_with_one_message(smoke_run):
    out = results(smoke_run)
    step = STEPS[1]
    weights = out / "checkpoints" / f"step_{step}" / "model.safetensors"
    original = weights.read_bytes()
    eval_json = out / "eval" / f"step_{step}.json"
    eval_json.unlink()
    try:
        weights.write_bytes(original[: len(original) // 2])
        result = run_snakemake(
            smoke_run,
            str(eval_json.relative_to(smoke_run)),
            "--cores",
            "1",
            "--allowed-rules",
            "evaluate",
            "--configfile",
            "config/smoke.yaml",
        )
        assert result.returncode != 0
        log = (out / "logs" / "evaluate" / f"step_{step}.log").read_text()
        assert "model.safetensors" in log and "truncated" in log
        assert "Traceback" not in log
        assert not eval_json.exists()
        assert not list(eval_json.parent.glob(f".step_{step}*"))
    finally:
        weights.write_bytes(original)


# --- what the figures and the report show --------------------------------------------------


def test_figures_hold_the_runs_tables(smoke_run):
    """The smoke run's linearity and energy-share figures, drawn from its own analysis files,
    have a cell for every module its tables count."""
    from test_figures import check_energy_share_figure, check_linearity_figure

    from rlpredict import figures

    out = results(smoke_run)
    weights = pd.read_parquet(out / "analysis" / "linearity" / "weights.parquet")
    logprobs = pd.read_parquet(out / "analysis" / "linearity" / "logprobs.parquet")
    rank1 = pd.read_parquet(out / "analysis" / "linearity" / "rank1_r2.parquet")
    summary = pd.read_csv(out / "tables" / "linearity.csv")
    fig = figures.linearity(weights, logprobs, rank1, CONFIG["run"])
    check_linearity_figure(fig, weights, logprobs, rank1, summary)
    spectra = pd.concat(
        [pd.read_parquet(p) for p in sorted((out / "analysis" / "spectrum").glob("*/*.parquet"))],
        ignore_index=True,
    )
    check_energy_share_figure(figures.rank1_energy_share(spectra, CONFIG["run"]), spectra)


def report_pages(report_html: str) -> list[str]:
    """Every HTML page the Snakemake report embeds (as base64 data URIs)."""
    pattern = r"data:text/html[^,\"']*;base64,([A-Za-z0-9+/=]+)"
    return [base64.b64decode(m).decode("utf-8") for m in re.findall(pattern, report_html)]


def test_report_shows_every_table_in_the_page(smoke_run):
    """Each table is embedded as a page the report displays (not a download), with every
    cell; the run is described; no rule parameter shows as a Python object."""
    from rlpredict.figures import format_cell

    report = results(smoke_run) / "report_tables.html"
    result = run_snakemake(smoke_run, "--configfile", "config/smoke.yaml", "--report", str(report))
    assert result.returncode == 0, result.stderr[-3000:]
    text = report.read_text(encoding="utf-8")
    assert "How to read this report" in text
    assert "Job(" not in text and "object at 0x" not in text
    pages = report_pages(text)
    tables = results(smoke_run) / "tables"
    for name in ("accuracy_vs_step", "rank_ablation", "speedup_vs_accuracy", "linearity"):
        table = pd.read_csv(tables / f"{name}.csv", dtype={"rank": str})
        cells = [html.escape(format_cell(v)) for v in table.astype(object).to_numpy().ravel()]
        shown = [p for p in pages if all(f"<th>{html.escape(c)}</th>" in p for c in table)]
        assert len(shown) == 1, name
        assert [c for c in cells if c not in shown[0]] == [], name
        assert shown[0].count("<tr") == len(table) + 1, name


def test_killed_run_continues_after_unlock(smoke_run):
    """README: after kill -9 the next start stops on the lock; `--unlock` with the same config,
    then the rerun redoes the job that was running. Runs last: it rewrites linearity outputs."""
    out = results(smoke_run)
    html_view = out / "tables" / "linearity.html"
    args = ["--cores", "1", "--configfile", "config/smoke.yaml"]
    proc = subprocess.Popen(
        [snakemake_bin(), *args, "--forcerun", "linearity_report"],
        cwd=smoke_run,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 300
        incomplete = smoke_run / ".snakemake" / "incomplete"
        while not (incomplete.exists() and any(incomplete.iterdir())):
            assert proc.poll() is None and time.monotonic() < deadline, "the job never started"
            time.sleep(0.2)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    locked = run_snakemake(smoke_run, *args)
    assert locked.returncode != 0
    assert "--unlock" in locked.stdout + locked.stderr
    unlocked = run_snakemake(smoke_run, "--unlock", "--configfile", "config/smoke.yaml")
    assert unlocked.returncode == 0, unlocked.stderr[-3000:]
    rerun = run_snakemake(smoke_run, *args)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "linearity_report" in rerun.stdout + rerun.stderr
    assert "<table" in html_view.read_text(encoding="utf-8")
    done = run_snakemake(smoke_run, "-n", "--configfile", "config/smoke.yaml")
    assert "Nothing to be done" in done.stdout + done.stderr


def test_claims_table_decides_every_enabled_claim(smoke_run):
    from rlpredict.claims import COLUMNS, VERDICTS

    tables = results(smoke_run) / "tables"
    table = pd.read_csv(tables / "claims.csv").set_index("id")
    assert list(table.reset_index().columns) == COLUMNS
    assert len(table) >= 8
    assert table["verdict"].isin(VERDICTS).all()
    # smoke enables ablation with the SFT control, every extrapolation method and linearity
    enabled = table.loc[[f"C{i}" for i in range(1, 9)]]
    assert enabled["value"].notna().all(), enabled[enabled["value"].isna()]["rule"].tolist()
    assert (enabled["verdict"] != "not run").all()
    assert table.loc["C9", "verdict"] == "not run"
    ablation = pd.read_csv(tables / "rank_ablation.csv", dtype={"rank": str})
    rl1 = ablation[(ablation["source"] == "rl") & (ablation["rank"] == "1")].iloc[0]
    assert table.loc["C1", "value"] == pytest.approx(rl1["relative_accuracy"])
    assert "C8" in (tables / "claims.html").read_text()
