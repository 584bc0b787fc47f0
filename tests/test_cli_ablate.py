"""The `rlpredict ablate` and `rlpredict spectrum` commands on real model dirs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file, save_file
from tiny_models import tiny_model

from rlpredict.cli import COMMANDS, main


def save_model(path: Path, seed: int, **overrides) -> None:
    tiny_model(seed, **overrides).save_pretrained(path)


@pytest.fixture
def pair(tmp_path: Path) -> tuple[Path, Path]:
    save_model(tmp_path / "base", seed=0)
    save_model(tmp_path / "ckpt", seed=1)
    return tmp_path / "base", tmp_path / "ckpt"


def ablate_args(base: Path, ckpt: Path, out: Path, *extra: str) -> list[str]:
    return ["ablate", "--base", str(base), "--checkpoint", str(ckpt), "--out", str(out), *extra]


def test_commands_are_registered():
    assert {"ablate", "spectrum"} <= set(COMMANDS)


def test_ablate_writes_model(pair, tmp_path, capsys):
    base, ckpt = pair
    out = tmp_path / "out"
    args = ablate_args(base, ckpt, out, "--rank", "2", "--scale", "none", "--lam", "0.5")
    assert main([*args, "--dtype", "bfloat16", "--modules", r"mlp\.up_proj\.weight$"]) == 0
    assert "2 matrices" in capsys.readouterr().out
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    tensors = load_file(out / "model.safetensors")
    w0, wt = load_file(base / "model.safetensors"), load_file(ckpt / "model.safetensors")
    q = "model.layers.0.self_attn.q_proj.weight"
    assert torch.equal(tensors[q], w0[q].to(torch.bfloat16))  # not selected: base value
    up = "model.layers.1.mlp.up_proj.weight"
    U, S, Vh = torch.linalg.svd((wt[up] - w0[up]).double(), full_matrices=False)
    expected = w0[up].double() + 0.5 * (U[:, :2] * S[:2]) @ Vh[:2]
    assert torch.allclose(tensors[up].double(), expected, atol=1e-2, rtol=1e-2)
    assert not torch.equal(tensors[up], w0[up].to(torch.bfloat16))


def _damage_shape(path: Path) -> None:
    tensors = load_file(path / "model.safetensors")
    name = "model.layers.0.mlp.gate_proj.weight"
    tensors[name] = tensors[name][:8].contiguous()
    save_file(tensors, path / "model.safetensors")


def _damage_missing(path: Path) -> None:
    tensors = load_file(path / "model.safetensors")
    del tensors["model.norm.weight"]
    save_file(tensors, path / "model.safetensors")


def _damage_nan(path: Path) -> None:
    tensors = load_file(path / "model.safetensors")
    tensors["model.layers.1.self_attn.o_proj.weight"][0, 0] = float("inf")
    save_file(tensors, path / "model.safetensors")


def _damage_truncate(path: Path) -> None:
    weights = path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-10])


def _damage_architecture(path: Path) -> None:
    save_model(path, seed=1, intermediate_size=96)


def _damage_remove(path: Path) -> None:
    for p in path.iterdir():
        p.unlink()
    path.rmdir()


CASES = {
    "shapes": (_damage_shape, [], "tensor 'model.layers.0.mlp.gate_proj.weight' has shape"),
    "architecture": (_damage_architecture, [], "different architecture: config intermediate"),
    "missing tensor": (_damage_missing, [], "tensor 'model.norm.weight' is missing from"),
    "non-finite": (_damage_nan, [], "model.safetensors: tensor 'model.layers.1.self_attn.o_proj"),
    "truncated": (_damage_truncate, [], "model.safetensors: truncated safetensors file"),
    "missing dir": (_damage_remove, [], "ckpt: model dir not found"),
    "bad rank": (None, ["--rank", "zero"], "invalid rank 'zero'"),
    "no match": (
        None,
        ["--rank", "1", "--modules", "adapter"],
        "module regex 'adapter' matches no",
    ),
}


@pytest.mark.parametrize("case", CASES)
def test_ablate_bad_input_exits_2_with_one_line(pair, tmp_path, capsys, case):
    base, ckpt = pair
    damage, extra, message = CASES[case]
    if damage:
        damage(ckpt)
    args = ablate_args(base, ckpt, tmp_path / "out", *(extra or ["--rank", "1"]))
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("rlpredict: error: ") and message in err
    if damage:
        assert str(ckpt) in err
    assert not any(p.name.startswith((".out", "out")) for p in tmp_path.iterdir())


def test_entry_point_reports_error_and_exit_status(tmp_path):
    script = Path(sys.executable).with_name("rlpredict")
    cmd = [str(script)] if script.exists() else [sys.executable, "-m", "rlpredict.cli"]
    args = ablate_args(tmp_path / "nope", tmp_path / "nope2", tmp_path / "out", "--rank", "1")
    proc = subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"rlpredict: error: {tmp_path}/nope: model dir not found"
    ]
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_spectrum_writes_table(pair, tmp_path, suffix):
    from rlpredict.spectral import spectrum_table

    base, ckpt = pair
    out = tmp_path / "tables" / f"spectrum{suffix}"
    assert (
        main(
            [
                "spectrum",
                "--base",
                str(base),
                "--checkpoint",
                str(ckpt),
                "--out",
                str(out),
                "--k",
                "2",
            ]
        )
        == 0
    )
    table = pd.read_csv(out) if suffix == ".csv" else pd.read_parquet(out)
    expected = spectrum_table(base, ckpt, k=2)
    assert len(table) == len(expected) > 0
    assert list(table.columns) == list(expected.columns)
    assert [p.name for p in out.parent.iterdir()] == [out.name]


def test_spectrum_rejects_unknown_suffix(pair, tmp_path, capsys):
    base, ckpt = pair
    out = tmp_path / "spectrum.xlsx"
    args = ["spectrum", "--base", str(base), "--checkpoint", str(ckpt), "--out", str(out)]
    assert main(args) == 2
    assert "must end in .parquet or .csv" in capsys.readouterr().err
    assert not out.exists()
