"""``rlpredict convert``: verl FSDP checkpoints → fp32 HF dirs, on checkpoints verl wrote.

The two-rank run of tests/test_verl_checkpoints.py (FSDP2, written by verl's own checkpoint
manager in the verl environment) is converted from the command line and compared bit for
bit with the unsharded fp32 weights. FSDP1 cannot run without an accelerator; its sharded
state dict holds the same DTensor ``Shard(0)`` pieces, so its layout is checked on the same
shards relabelled as FSDP1 writes them (``FSDP_version: 1``, wrapper-prefixed names).

Every refusal: exit status 2, one error line naming the file, no output (not even a hidden
temporary) and every input file byte-identical afterwards.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from test_cli_outputs import refused, snapshot
from test_verl_checkpoints import assert_bitwise_equal, reference, verl_run  # noqa: F401

from rlpredict.cli import main

SHARD = "model_world_size_2_rank_{}.pt"


def relabel_as_fsdp1(run: Path) -> None:
    """Give every actor dir of ``run`` the FSDP1 layout: fsdp_config.json says version 1 and
    each state-dict name carries FSDP1's wrapper prefix."""
    for actor in sorted(run.glob("global_step_*/actor")):
        config = actor / "fsdp_config.json"
        config.write_text(json.dumps({**json.loads(config.read_text()), "FSDP_version": 1}))
        for rank in (0, 1):
            shard = actor / SHARD.format(rank)
            state = torch.load(shard, weights_only=False)
            torch.save({f"_fsdp_wrapped_module.{k}": v for k, v in state.items()}, shard)


@pytest.fixture
def run_copy(verl_run, tmp_path) -> Path:  # noqa: F811
    """A copy of the verl run dir with the base model next to it, to break at will."""
    shutil.copytree(verl_run / "verl", tmp_path / "verl")
    shutil.copytree(verl_run / "base", tmp_path / "base")
    return tmp_path / "verl"


def leftovers(parent: Path, out: Path) -> list[str]:
    """What a refused command left next to (or at) its output."""
    return sorted(p.name for p in parent.iterdir() if p.name.startswith((".", out.name)))


@pytest.mark.parametrize("layout", ["fsdp2", "fsdp1"])
def test_convert_is_bit_identical_in_fp32(verl_run, run_copy, tmp_path, capsys, layout):  # noqa: F811
    if layout == "fsdp1":
        relabel_as_fsdp1(run_copy)
    before = snapshot(tmp_path)
    out = tmp_path / "converted"
    argv = ["convert", str(run_copy), "--base", str(tmp_path / "base"), "--out", str(out)]
    assert main([*argv, "--prefer", "shards"]) == 0
    assert "steps [0, 1, 2]" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["step_0", "step_1", "step_2"]
    for step in (1, 2):  # both from the rank shards
        assert_bitwise_equal(out / f"step_{step}", reference(verl_run, step))
    after = snapshot(tmp_path)
    assert {k: v for k, v in after.items() if not k.startswith("converted")} == before


def test_one_actor_dir_converts_to_its_step(verl_run, tmp_path, capsys):  # noqa: F811
    actor = verl_run / "verl" / "global_step_2" / "actor"
    assert main(["convert", str(actor), "--out", str(tmp_path / "one")]) == 0
    assert [p.name for p in (tmp_path / "one").iterdir()] == ["step_2"]
    assert_bitwise_equal(tmp_path / "one" / "step_2", reference(verl_run, 2))


def test_saves_after_the_tracker_are_left_out_of_a_run(run_copy, tmp_path, capsys):
    (run_copy / "latest_checkpointed_iteration.txt").write_text("1")
    assert main(["convert", str(run_copy), "--out", str(tmp_path / "out")]) == 0
    err = capsys.readouterr().err
    assert "global_step_2 left out" in err and "warning" in err
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["step_1"]


def _missing_rank_shard(run: Path) -> tuple[Path, list[str]]:
    (run / "global_step_2" / "actor" / SHARD.format(1)).unlink()
    return run, [SHARD.format(1), "missing rank shard"]


def _bf16_weights(run: Path) -> tuple[Path, list[str]]:
    from safetensors.torch import load_file, save_file

    actor = run / "global_step_1" / "actor"
    for rank in (0, 1):
        (actor / SHARD.format(rank)).unlink()
    weights = actor / "huggingface" / "model.safetensors"
    save_file({k: v.bfloat16() for k, v in load_file(weights).items()}, weights)
    return run, [str(actor / "huggingface"), "bfloat16", "fp32"]


def _step_after_the_tracker(run: Path) -> tuple[Path, list[str]]:
    (run / "latest_checkpointed_iteration.txt").write_text("1")
    return run / "global_step_2" / "actor", ["latest_checkpointed_iteration.txt", "step 2"]


def _missing_dir(run: Path) -> tuple[Path, list[str]]:
    return run.parent / "no_such_run", ["no_such_run", "not found"]


BAD_INPUTS = {
    "missing rank shard": _missing_rank_shard,
    "bf16 weights": _bf16_weights,
    "step newer than the tracker": _step_after_the_tracker,
    "missing dir": _missing_dir,
}


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_stops_with_one_line_and_no_output(run_copy, tmp_path, capsys, case):
    source, words = BAD_INPUTS[case](run_copy)
    before = snapshot(tmp_path)
    out = tmp_path / "out"
    refused(["convert", str(source), "--out", str(out)], capsys, *words)
    assert leftovers(tmp_path, out) == []
    assert snapshot(tmp_path) == before


def test_an_output_inside_the_input_is_refused(run_copy, tmp_path, capsys):
    before = snapshot(tmp_path)
    out = run_copy / "converted"
    refused(["convert", str(run_copy), "--out", str(out)], capsys, str(out), "inside the input")
    assert snapshot(tmp_path) == before


def test_the_base_may_not_be_overwritten(run_copy, tmp_path, capsys):
    before = snapshot(tmp_path)
    base = tmp_path / "base"
    argv = ["convert", str(run_copy), "--base", str(base), "--out", str(base)]
    refused(argv, capsys, "must differ from the input")
    assert snapshot(tmp_path) == before
