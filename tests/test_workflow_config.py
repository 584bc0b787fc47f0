"""A bad config stops the workflow before anything runs, with a message naming the key."""

import pytest
import yaml
from conftest import REPO, copy_workflow, run_snakemake

from rlpredict.workflow import checkpoint_steps, rank_argument, rank_tokens


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
