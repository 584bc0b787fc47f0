"""A bad config stops the workflow before anything runs, with a message naming the key."""

import pytest
import yaml
from conftest import REPO, copy_workflow, run_snakemake

from rlpredict.workflow import (
    checkpoint_steps,
    matrix_shapes,
    rank_argument,
    rank_problem,
    rank_tokens,
)


def smoke_config() -> dict:
    return yaml.safe_load((REPO / "config" / "smoke.yaml").read_text())


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (lambda c: c["train"].update(steps="many"), "steps"),
        (lambda c: c["train"]["trl"].update(lr=-1.0), "lr"),
        (lambda c: c["task"].update(digitz=3), "digitz"),
        (lambda c: c["eval"].update(backend="tpu"), "backend"),
        (lambda c: c["train"].update(save_every=1000), "train.save_every"),
        (lambda c: c.update(run="my run/1"), "run"),
    ],
)
def test_bad_config_stops_with_the_key_named(tmp_path, edit, expected):
    workdir = copy_workflow(tmp_path)
    config = smoke_config()
    edit(config)
    (workdir / "bad.yaml").write_text(yaml.safe_dump(config))
    result = run_snakemake(workdir, "-n", "--configfile", "bad.yaml")
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert expected in output
    assert "Traceback" not in output
    assert not (workdir / "results" / "smoke").exists()


@pytest.mark.parametrize(
    ("edit", "key", "says"),
    [
        (
            lambda c: c["extrapolate"].update(windows=[0.05]),
            "extrapolate.windows",
            "window 0.05 holds no checkpoint",
        ),
        (lambda c: c["ablate"].update(ranks=[1, 100000]), "ablate.ranks", "equals full"),
        (lambda c: c["ablate"].update(ranks=[1, 64]), "ablate.ranks", "k_proj, v_proj"),
        (lambda c: c["task"].update(digitz=3), "task.digitz", "unknown key"),
        (lambda c: c["train"]["trl"].update(lr=-1.0), "train.trl.lr", "minimum"),
        (lambda c: c["train"].update(save_every=1000), "train.save_every", "exceeds"),
    ],
)
def test_config_problems_are_one_line_each_before_anything_runs(tmp_path, edit, key, says):
    """A config that parses but would plan nothing (or something else than it says), and a
    schema violation: one line ``config KEY: problem (file)``, no schema dump, no results."""
    workdir = copy_workflow(tmp_path)
    config = smoke_config()
    edit(config)
    (workdir / "bad.yaml").write_text(yaml.safe_dump(config))
    result = run_snakemake(workdir, "-n", "--configfile", "bad.yaml")
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.startswith("config ")]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"config {key}: ") and lines[0].endswith("(bad.yaml)")
    assert says in lines[0]
    assert "Failed validating" not in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.splitlines()) <= 3, result.stderr
    assert not (workdir / "results").exists()


def test_every_problem_is_named_at_once(tmp_path):
    workdir = copy_workflow(tmp_path)
    config = smoke_config()
    config["train"]["trl"]["lr"] = -1.0
    config["task"]["digitz"] = 3
    (workdir / "bad.yaml").write_text(yaml.safe_dump(config))
    result = run_snakemake(workdir, "-n", "--configfile", "bad.yaml")
    assert result.returncode != 0
    keys = sorted(
        line.split(":")[0] for line in result.stderr.splitlines() if line.startswith("config ")
    )
    assert keys == ["config task.digitz", "config train.trl.lr"]


def test_rank_reaching_a_matrix_size_is_found_from_the_model_sizes():
    sizes = smoke_config()["model"]
    shapes = matrix_shapes(sizes)
    assert shapes["model.layers.0.self_attn.k_proj.weight"] == (64, 128)
    assert shapes["model.layers.1.mlp.down_proj.weight"] == (128, 512)
    regex = smoke_config()["ablate"]["modules"]
    assert rank_problem(63, shapes, regex) is None
    assert rank_problem("full", shapes, regex) is None
    assert "k_proj, v_proj matrices" in rank_problem(64, shapes, regex)
    assert "equals full" in rank_problem(128, shapes, regex)
    assert rank_problem(64, shapes, r"mlp\.") is None


def test_dry_run_of_the_default_config_plans_every_stage(tmp_path):
    result = run_snakemake(copy_workflow(tmp_path), "-n")
    assert result.returncode == 0, result.stderr
    for rule in ("make_data", "base_model", "train_rl", "evaluate", "accuracy_table", "ablate"):
        assert f"rule {rule}:" in result.stdout


def test_checkpoint_steps():
    assert checkpoint_steps(800, 80) == list(range(0, 801, 80))
    assert checkpoint_steps(50, 20) == [0, 20, 40, 50]
    with pytest.raises(ValueError, match="train.save_every"):
        checkpoint_steps(10, 20)


def test_rank_tokens_round_trip():
    tokens = rank_tokens([8, 1, "full", 1], [50, 10])
    assert tokens == ["1", "8", "10pct", "50pct", "full"]
    assert [rank_argument(t) for t in tokens] == ["1", "8", "10%", "50%", "full"]


def test_rank_is_checked_against_a_base_whose_sizes_were_unknown(tmp_path):
    """A hub model's sizes are only known once it is downloaded: the ablate job checks."""
    from tiny_models import save_toy_base

    from rlpredict.workflow import check_rank_against_model

    base = save_toy_base(tmp_path / "base", smoke_config()["model"])
    regex = smoke_config()["ablate"]["modules"]
    for token in ("1", "63", "10pct", "full"):
        check_rank_against_model(token, base, regex)
    with pytest.raises(ValueError, match=r"config ablate.ranks: rank 100000 .*equals full.*base"):
        check_rank_against_model("100000", base, regex)
