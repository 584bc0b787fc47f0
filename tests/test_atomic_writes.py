"""One atomic-output helper (``rlpredict.atomic``, re-exported by ``rlpredict.checkpoints``):
what it leaves behind on success and on failure, and that every writer of the package goes
through it (a failed rename leaves neither the output nor a temporary behind)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from rlpredict import atomic, checkpoints
from rlpredict.atomic import atomic_output_dir, atomic_output_file, atomic_write_text

RESOURCES = Path(__file__).resolve().parents[1] / "resources" / "benchmarks"


def listing(root: Path) -> list[str]:
    """Every path under root (hidden ones included), relative, sorted."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


class Boom(OSError):
    """The rename onto the target failed."""


@pytest.fixture
def failing_commit(monkeypatch):
    """Make every commit (the rename onto the target) fail, as a full disk or a kill would."""

    def fail(tmp: Path, target: Path) -> None:
        assert tmp.exists(), "the helper commits only a complete temporary"
        raise Boom(f"cannot rename {tmp} to {target}")

    monkeypatch.setattr(atomic, "commit", fail)


# ---------------------------------------------------------------------------------------
# The helper


def test_checkpoints_reexports_the_one_helper():
    assert checkpoints.atomic_output_file is atomic_output_file
    assert checkpoints.atomic_output_dir is atomic_output_dir
    assert checkpoints.check_output_path is atomic.check_output_path


def test_a_file_is_written_under_a_hidden_name_with_its_suffix(tmp_path):
    target = tmp_path / "sub" / "fig.png"
    with atomic_output_file(target) as tmp:
        assert tmp.parent == target.parent and not tmp.exists()
        assert tmp.name.startswith(".fig.png.tmp-") and tmp.suffix == ".png"
        tmp.write_text("new")
        assert not target.exists()
    assert target.read_text() == "new"
    assert listing(tmp_path) == ["sub", "sub/fig.png"]


def test_a_dir_is_written_under_a_hidden_name(tmp_path):
    target = tmp_path / "model.v1"
    with atomic_output_dir(target) as tmp:
        assert tmp.is_dir() and tmp.name.startswith(".model.v1.tmp-")
        assert not tmp.name.endswith(".v1")  # only files keep their suffix
        (tmp / "a").write_text("a")
    assert listing(tmp_path) == ["model.v1", "model.v1/a"]


@pytest.mark.parametrize("kind", ["file", "dir"])
def test_an_existing_output_is_replaced_only_when_the_new_one_is_complete(tmp_path, kind):
    target = tmp_path / "out"
    helper = atomic_output_file if kind == "file" else atomic_output_dir

    def write(tmp: Path, text: str) -> None:
        (tmp if kind == "file" else tmp / "a").write_text(text)

    with helper(target) as tmp:
        write(tmp, "old")
    before = listing(tmp_path)
    with pytest.raises(RuntimeError, match="interrupted"), helper(target) as tmp:
        write(tmp, "new")
        raise RuntimeError("interrupted")
    assert listing(tmp_path) == before
    assert (target if kind == "file" else target / "a").read_text() == "old"
    with helper(target) as tmp:
        write(tmp, "new")
    assert listing(tmp_path) == before
    assert (target if kind == "file" else target / "a").read_text() == "new"


def test_a_failed_rename_of_a_dir_puts_the_old_one_back(tmp_path, monkeypatch):
    target = tmp_path / "out"
    with atomic_output_dir(target) as tmp:
        (tmp / "a").write_text("old")
    rename = Path.rename

    def rename_failing_for_the_new_dir(self, dest):
        if self.name.startswith(".out.tmp-"):
            raise Boom("rename failed")
        return rename(self, dest)

    monkeypatch.setattr(Path, "rename", rename_failing_for_the_new_dir)
    with pytest.raises(Boom), atomic_output_dir(target) as tmp:
        (tmp / "a").write_text("new")
    assert listing(tmp_path) == ["out", "out/a"] and (target / "a").read_text() == "old"


@pytest.mark.parametrize("helper", [atomic_output_file, atomic_output_dir])
def test_an_output_onto_an_input_is_refused_before_anything_is_written(tmp_path, helper):
    source = tmp_path / "in"
    source.mkdir()
    refused = pytest.raises(ValueError, match="must not lie inside the input")
    with refused, helper(source / "x", inputs=[source]):
        pytest.fail("the body must not run")
    assert listing(tmp_path) == ["in"]


def test_atomic_write_text_writes_exactly_the_text(tmp_path):
    atomic_write_text(tmp_path / "a.txt", "ä\n", encoding="utf-8")
    assert (tmp_path / "a.txt").read_bytes() == "ä\n".encode()


# ---------------------------------------------------------------------------------------
# Every writer goes through it


def _table() -> pd.DataFrame:
    return pd.DataFrame({"step": [0, 10], "accuracy": [0.25, 0.5]})


def write_json(out: Path) -> None:
    from rlpredict.evaluate import write_json

    write_json({"accuracy": 0.5}, out / "eval.json")


def write_table(out: Path) -> None:
    from rlpredict.tables import write_table

    write_table(_table(), out / "t.csv", out / "t.md")


def save_figure(out: Path) -> None:
    import matplotlib.pyplot as plt

    from rlpredict.figures import save_figure

    fig, ax = plt.subplots()
    ax.plot([0, 1], [0, 1])
    save_figure(fig, out / "f.png", out / "f.pdf")


def save_table_html(out: Path) -> None:
    from rlpredict.figures import save_table_html

    save_table_html(_table(), "title", out / "t.html")


def workflow_write_parquet(out: Path) -> None:
    from rlpredict.workflow import write_parquet

    write_parquet(_table(), out / "t.parquet")


def export_write_parquet(out: Path) -> None:
    from rlpredict.tasks.export import write_parquet

    write_parquet([{"a": 1}], out / "rows.parquet")


def write_jsonl(out: Path) -> None:
    from rlpredict.tasks.arithmetic import write_jsonl

    write_jsonl([{"a": 1}, {"a": 2}], out / "rows.jsonl")


def write_sweep_tables(out: Path) -> None:
    from rlpredict.sweep import write_sweep_tables

    table = pd.DataFrame({"run": ["r"], "overrides": ["x=1"]})
    summary = pd.DataFrame({"setting": ["s"], "seeds": [1], "overrides": ["x=1"]})
    write_sweep_tables(table, summary, out / "runs.csv", out / "summary.csv", out / "sweep.md")


def make_dev_split(out: Path) -> None:
    from rlpredict.evaluate_vllm import make_dev_split

    rows = (RESOURCES / "gsm8k.jsonl").read_text().splitlines()[:4]
    (out.parent / "train.jsonl").write_text("".join(r + "\n" for r in rows))
    (out.parent / "test.jsonl").write_text(rows[0] + "\n")
    make_dev_split(
        out.parent / "train.jsonl",
        out / "dev.jsonl",
        prompt_format="math",
        test_files=[out.parent / "test.jsonl"],
        size=2,
    )


def write_done(out: Path) -> None:
    from rlpredict.train.verl_run import write_done

    write_done(out, [0, 10], ["python", "-m", "verl"])


def verl_run_record(out: Path) -> None:
    from rlpredict.train.verl_backend import prepare_run_dir

    assert prepare_run_dir(out, ["trainer.total_epochs=1"]) == "disable"


def verl_tracker(out: Path) -> None:
    from rlpredict.train import verl_backend

    (out / "global_step_3").mkdir(parents=True, exist_ok=True)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(verl_backend, "verl_checkpoint_problem", lambda path, contents: None)
        assert verl_backend.resume_step(out, ["model"]) == 3


def trl_state_marker(out: Path) -> None:
    from rlpredict.train.trl_backend import prepare_state_dir

    assert prepare_state_dir(out, {"seed": 1}) is None


def write_not_built(out: Path) -> None:
    checkpoints.write_not_built(out / "model", "equal window accuracies")


WRITERS = {
    write_json: {"eval.json"},
    write_table: {"t.csv", "t.md"},
    save_figure: {"f.png", "f.pdf"},
    save_table_html: {"t.html"},
    workflow_write_parquet: {"t.parquet"},
    export_write_parquet: {"rows.parquet"},
    write_jsonl: {"rows.jsonl"},
    write_sweep_tables: {"runs.csv", "summary.csv", "sweep.md"},
    make_dev_split: {"dev.jsonl"},
    write_done: {"rlpredict_done.json"},
    verl_run_record: {"rlpredict_run.json"},
    verl_tracker: {"global_step_3", "latest_checkpointed_iteration.txt"},
    trl_state_marker: {"rlpredict_run.json"},
    write_not_built: {"model", "model/not_built.json"},
}


@pytest.mark.parametrize("writer", list(WRITERS), ids=lambda w: w.__name__)
def test_every_writer_renames_a_complete_temporary(tmp_path, writer, failing_commit, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(Boom):
        writer(out)
    left = set(listing(out)) - {"global_step_3"}
    assert not left, f"{writer.__name__} left {sorted(left)} after a failed rename"
    monkeypatch.undo()
    writer(out)
    assert set(listing(out)) == WRITERS[writer]


def test_written_bytes_are_what_the_writers_always_wrote(tmp_path):
    from rlpredict.evaluate import write_json
    from rlpredict.tables import write_table
    from rlpredict.workflow import write_parquet

    write_json({"a": [1, 2]}, tmp_path / "a.json")
    assert (tmp_path / "a.json").read_text() == json.dumps({"a": [1, 2]}, indent=1)
    write_table(_table(), tmp_path / "t.csv", tmp_path / "t.md")
    assert (tmp_path / "t.csv").read_text() == _table().to_csv(index=False)
    markdown = _table().to_markdown(index=False, floatfmt=".4g") + "\n"
    assert (tmp_path / "t.md").read_text() == markdown
    write_parquet(_table(), tmp_path / "t.parquet")
    _table().to_parquet(tmp_path / "direct.parquet", index=False)
    assert (tmp_path / "t.parquet").read_bytes() == (tmp_path / "direct.parquet").read_bytes()
    save_figure(tmp_path)
    assert (tmp_path / "f.png").read_bytes().startswith(b"\x89PNG")
    assert (tmp_path / "f.pdf").read_bytes().startswith(b"%PDF")
