"""The re-grounding target on a tiny config: real TRL segments, real extrapolation, real
lm-eval, the table, the figure and claim C9; then a chain resumes after its last finished
segment, and a new (M, N) gets its own segments."""

import json
import shutil

import pandas as pd
import pytest
import yaml
from conftest import copy_workflow, run_snakemake

pytestmark = pytest.mark.e2e

CONFIG = {
    "run": "rg",
    "seed": 0,
    "task": {"digits": 2, "train_size": 400, "dev_size": 40, "test_size": 40},
    "model": {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_layers": 1,
        "num_heads": 2,
        "num_kv_heads": 1,
        "max_positions": 32,
        "tie_embeddings": True,
    },
    "base": {"warmup": {"max_steps": 20, "check_every": 10, "target_accuracy": 0.0}},
    "train": {
        "steps": 8,
        "save_every": 4,
        "trl": {
            "prompts_per_step": 2,
            "num_generations": 2,
            "max_completion_length": 4,
            "lr": 1.0e-3,
            "lr_schedule": "linear",
            "log_every": 1,
        },
    },
    "eval": {"batch_size": 64},
    "control": {"sft": {"enabled": False}},
    "ablate": {"enabled": False},
    "extrapolate": {"enabled": False},
    "linearity": {"enabled": False},
    "regrounding": {
        "pairs": [[4, 4], [2, 6], [4, 0]],
        "lr_schedule": "continue",
        "optimizer": "keep",
    },
}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    workdir = copy_workflow(tmp_path_factory.mktemp("regrounding"))
    (workdir / "rg.yaml").write_text(yaml.safe_dump(CONFIG))
    result = run_snakemake(workdir, "regrounding", "--cores", "2", "--configfile", "rg.yaml")
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-5000:]
    return workdir


def test_table_covers_every_segment_of_every_chain(run):
    table = pd.read_csv(run / "results/rg/tables/regrounding.csv")
    curve = table[table["table"] == "curve"]
    steps = curve.groupby("series")["real_step"].apply(list).to_dict()
    assert steps["standard RL"] == [0, 4, 8]
    assert steps["(M, N) = (2, 6) extrapolated"] == [0, 2, 4, 6, 8]
    virtual = curve[curve["series"] == "(M, N) = (2, 6) extrapolated"]["virtual_step"]
    assert virtual.tolist() == [0, 8, 16, 24, 32]
    # N = 0: restarts only; each "extrapolated" model stands where its segment ended
    restarts = curve[curve["series"] == "(M, N) = (4, 0) extrapolated"]
    assert restarts["virtual_step"].tolist() == restarts["real_step"].tolist() == [0, 4, 8]
    assert curve["accuracy"].between(0, 1).all()
    assert {"steps_to_target", "equal_budget"} <= set(table["table"])
    # evaluation time counted: every model after the base adds its evaluation's seconds
    later = curve[curve["real_step"] > 0]
    assert (later["seconds_with_eval"] > later["seconds"]).all()
    assert (run / "results/rg/figures/regrounding.png").stat().st_size > 0
    md = (run / "results/rg/tables/regrounding.md").read_text()
    assert md.count("## ") == 3


def test_segments_chain_their_models(run):
    models = run / "results/rg/models/regrounding"
    assert sorted(p.name for p in (models / "m2_n6").iterdir()) == [f"seg{k}" for k in range(1, 5)]
    # a segment's end is deleted once extrapolated and evaluated; the chain keeps where each
    # next segment starts
    for k in range(1, 5):
        assert [p.name for p in (models / f"m2_n6/seg{k}").iterdir()] == ["extrap"]
    plan = (models / "m2_n6/seg2/extrap/rlpredict_plan.json").read_text()
    assert '"two-point"' in plan and "4.0" in plan  # α = (2 + 6) / 2
    restart = json.loads((models / "m4_n0/seg2/extrap/rlpredict_plan.json").read_text())
    assert restart["alpha"] == 1.0
    history = pd.read_csv(run / "results/rg/analysis/regrounding/m2_n6/seg2_history.csv")
    # lr continued over the chain's 8 real steps (linear decay from 1e-3): steps 2 and 3
    assert history["learning_rate"].tolist() == pytest.approx([7.5e-4, 6.25e-4])
    assert history["real_step"].tolist() == [3, 4]


def planned_segments(dry_run: str, rule: str) -> set[str]:
    """``chain/seg`` of every ``rule`` job a dry run plans."""
    jobs = dry_run.split("\nrule ")[1:]
    found = set()
    for job in jobs:
        if job.startswith(f"{rule}:"):
            line = next(ln for ln in job.splitlines() if "wildcards:" in ln)
            chain, seg = (part.split("=")[1] for part in line.split(":", 1)[1].split(","))
            found.add(f"{chain.strip()}/seg{seg.strip()}")
    return found


def test_interrupted_chain_resumes_after_its_last_finished_segment(run):
    """As if stopped after segment 1 of (4, 4): its later models, their evaluations and the
    table are missing; only segment 2 of that chain is trained again."""
    results = run / "results/rg"
    shutil.rmtree(results / "models/regrounding/m4_n4/seg2")  # its extrapolated model
    shutil.rmtree(results / "eval/regrounding/m4_n4/seg2")
    for name in ("tables/regrounding.csv", "tables/regrounding.md"):
        (results / name).unlink()
    result = run_snakemake(run, "regrounding", "-n", "--configfile", "rg.yaml")
    assert result.returncode == 0, result.stderr[-3000:]
    assert planned_segments(result.stdout, "regrounding_train") == {"m4_n4/seg2"}
    assert planned_segments(result.stdout, "regrounding_extrapolate") == {"m4_n4/seg2"}


def test_a_new_pair_gets_its_own_segments(run):
    config = {**CONFIG, "regrounding": {**CONFIG["regrounding"], "pairs": [[4, 6]]}}
    (run / "new.yaml").write_text(yaml.safe_dump(config))
    result = run_snakemake(run, "regrounding", "-n", "--configfile", "new.yaml")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "models/regrounding/m4_n6/seg1/end" in result.stdout
    assert "models/regrounding/m4_n4" not in result.stdout


@pytest.mark.parametrize(
    ("regrounding", "expected"),
    [
        ({}, "config regrounding.pairs: M = 80 is more than the budget of 8"),  # defaults
        ({"pairs": [[2, 2], [2, 2]]}, "config regrounding.pairs: (2, 2) is listed twice"),
    ],
)
def test_regrounding_target_stops_on_its_settings_in_one_line(tmp_path, regrounding, expected):
    """Also when re-grounding is not enabled: asking for the target checks its settings."""
    workdir = copy_workflow(tmp_path)
    config = {**CONFIG, "regrounding": regrounding}
    (workdir / "bad.yaml").write_text(yaml.safe_dump(config))
    result = run_snakemake(workdir, "regrounding", "-n", "--configfile", "bad.yaml")
    assert result.returncode != 0
    assert expected in result.stderr and "bad.yaml" in result.stderr
    assert "Traceback" not in result.stderr and "Exception" not in result.stderr
