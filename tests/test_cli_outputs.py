"""What the commands write: never onto an input, never non-finite weights, and ΔW never from
bf16/fp16 weights unless asked for.

Every refusal is checked the same way: exit status 2, one error line naming the file, no output
left behind, and every file of the inputs byte-identical afterwards.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file, save_file

from rlpredict.ablate import ablate_model
from rlpredict.checkpoints import (
    ModelReader,
    ModelWriter,
    atomic_output_dir,
    atomic_output_file,
    check_output_path,
)
from rlpredict.cli import main

UP = "model.layers.0.mlp.up_proj.weight"
Q = "model.layers.0.self_attn.q_proj.weight"
NORM = "model.norm.weight"
STEPS = (0, 10, 20, 30)


def write_model(path: Path, tensors: dict[str, torch.Tensor]) -> Path:
    """A model dir holding ``tensors`` (stored in their own dtypes)."""
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps({"model_type": "qwen2"}) + "\n")
    save_file({k: v.contiguous() for k, v in tensors.items()}, path / "model.safetensors")
    return path


def snapshot(root: Path) -> dict[str, str]:
    """Every path under root → sha256 of its bytes ("dir" for dirs, the target for links)."""
    found = {}
    for p in sorted(root.rglob("*")):
        key = str(p.relative_to(root))
        if p.is_symlink():
            found[key] = "link " + os.readlink(p)
        elif p.is_dir():
            found[key] = "dir"
        else:
            found[key] = hashlib.sha256(p.read_bytes()).hexdigest()
    return found


def refused(argv: list[str], capsys, *words: str) -> str:
    """Run the CLI; assert exit 2 and one error line holding ``words``; return that line."""
    assert main(argv) == 2
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.startswith("rlpredict: ")]
    assert len(lines) == 1, captured.err  # besides ablate's progress bar
    assert lines[0].startswith("rlpredict: error: ")
    for word in words:
        assert word in lines[0], (word, lines[0])
    assert "wrote" not in captured.out
    return lines[0]


# ---------------------------------------------------------------------------------------
# Outputs onto inputs


@pytest.fixture
def run(tmp_path: Path, monkeypatch) -> Path:
    """run/step_{0,10,20,30} on W(t) = W0 + t·1e-3·D, step_20 also holding trainer files;
    the working dir is run/, so relative paths name the steps."""
    g = torch.Generator().manual_seed(0)
    w0 = {UP: torch.randn(8, 6, generator=g), Q: torch.randn(6, 6, generator=g)}
    w0[NORM] = torch.ones(6)
    d = {k: torch.randn(v.shape, generator=g) for k, v in w0.items()}
    root = tmp_path / "run"
    for t in STEPS:
        write_model(root / f"step_{t}", {k: w0[k] + t * 1e-3 * d[k] for k in w0})
    (root / "step_20" / "optimizer.pt").write_bytes(b"adam state")
    (root / "step_20" / "trainer_state.json").write_text('{"global_step": 20}\n')
    (root / "prompts.csv").write_text("1+1=\n2+2=\n")
    monkeypatch.chdir(root)
    return root


PAIRS = "0=step_0 10=step_10 20=step_20"
WEIGHT = f"extrapolate weight {PAIRS} --target-step 100"
ALPHARL = (
    f"extrapolate alpharl {PAIRS} 30=step_30 --accuracy 10=0.2 --accuracy 20=0.3 "
    "--accuracy 30=0.4 --final-step 100"
)
ONTO = "writing it would destroy or change that input"

# Command line (run from run/), the output named in the error, what the error says.
ONTO_INPUT = {
    "weight onto an input (the reported case)": (
        f"{WEIGHT} --out step_20",
        "step_20",
        f"must differ from the input step_20 (it is the same path); {ONTO}",
    ),
    "weight inside an input": (
        f"{WEIGHT} --out step_20/pred",
        "step_20/pred",
        f"must not lie inside the input step_20; {ONTO}",
    ),
    "weight containing the inputs": (
        f"{WEIGHT} --out .",
        ".",
        f"must not contain the input step_0; {ONTO}",
    ),
    "weight onto a symlink to an input": (
        f"{WEIGHT} --out latest",
        "latest",
        "must differ from the input step_20",
    ),
    "expo onto the base through ..": (
        "extrapolate expo --base step_0 20=step_20 --alpha 1 --out ../run/step_0",
        "../run/step_0",
        "must differ from the input step_0",
    ),
    "relex": (
        f"extrapolate relex {PAIRS} --target-step 100 --out step_10",
        "step_10",
        "must differ from the input step_10",
    ),
    "alpharl model": (f"{ALPHARL} --out step_30", "step_30", "the input step_30"),
    "alpharl fits": (
        f"{ALPHARL} --out pred --fits step_20/fits.csv",
        "step_20/fits.csv",
        "--fits must not lie inside the input step_20",
    ),
    "alpharl fits inside its model": (
        f"{ALPHARL} --out pred --fits pred/fits.csv",
        "pred/fits.csv",
        "--fits and --out pred overlap",
    ),
    "ablate": (
        "ablate --base step_0 --checkpoint step_20 --rank 1 --out step_20",
        "step_20",
        "must differ from the input step_20",
    ),
    "spectrum": (
        "spectrum --base step_0 --checkpoint step_20 --out step_20/s.csv",
        "step_20/s.csv",
        "must not lie inside the input step_20",
    ),
    "linearity weights": (
        f"linearity weights {PAIRS} --out step_0/r2.parquet",
        "step_0/r2.parquet",
        "must not lie inside the input step_0",
    ),
    "linearity logprobs onto the prompts": (
        f"linearity logprobs {PAIRS} --prompts prompts.csv --out prompts.csv",
        "prompts.csv",
        "must differ from the input prompts.csv",
    ),
}


@pytest.mark.parametrize("case", ONTO_INPUT)
def test_an_output_onto_an_input_is_refused(run, capsys, case):
    command, out, says = ONTO_INPUT[case]
    (run / "latest").symlink_to("step_20")
    before = snapshot(run.parent)
    refused(command.split(), capsys, f"error: {out}: ", says)
    assert snapshot(run.parent) == before  # nothing written, nothing removed or changed


def test_weight_next_to_its_inputs_keeps_them(run, capsys):
    before = snapshot(run)
    assert main(f"{WEIGHT} --out pred".split()) == 0
    assert "wrote pred" in capsys.readouterr().out
    after = snapshot(run)
    assert {k: v for k, v in after.items() if not k.startswith("pred")} == before
    with ModelReader("pred") as p, ModelReader("step_20") as w20, ModelReader("step_10") as w10:
        expected = w20.get(UP) + 8 * (w20.get(UP) - w10.get(UP))  # W(100) on the line
        torch.testing.assert_close(p.get(UP), expected, rtol=1e-5, atol=1e-5)


def test_the_writers_refuse_their_inputs(run):
    (run / "latest").symlink_to("step_20")
    before = snapshot(run.parent)
    with pytest.raises(ValueError, match="output dir must differ from the input"):
        ModelWriter(run / "step_0", run / "step_0")
    with pytest.raises(ValueError, match="output dir must not lie inside the input"):
        ModelWriter(run / "step_10" / "x", run / "step_0", inputs=[run / "step_10"])
    with (
        pytest.raises(ValueError, match="must not contain the input"),
        atomic_output_dir(run, inputs=[run / "step_0"]),
    ):
        pass
    config = run / "step_20" / "config.json"
    with (
        pytest.raises(ValueError, match="output file must differ from the input"),
        atomic_output_file(run / "latest" / "config.json", inputs=[config]),
    ):
        pass
    with pytest.raises(ValueError, match="must differ from the input"):
        ablate_model(run / "step_0", "step_20", run / "step_20", rank=1, progress=False)
    assert snapshot(run.parent) == before
    check_output_path(run / "step_200", [run / "step_20", "step_2"])  # a name prefix is fine


# ---------------------------------------------------------------------------------------
# Non-finite weights after the cast to the output dtype


@pytest.fixture
def ones(tmp_path: Path) -> Path:
    """step_10 and step_20 of one 4×4 tensor, all 1.0 and all 1.1."""
    for t, value in ((10, 1.0), (20, 1.1)):
        write_model(tmp_path / f"step_{t}", {UP: torch.full((4, 4), value)})
    return tmp_path


def test_an_overflowing_dtype_cast_is_refused(ones, capsys):
    before = snapshot(ones)
    out = ones / "pred"
    argv = [
        "extrapolate",
        "weight",
        f"10={ones / 'step_10'}",
        f"20={ones / 'step_20'}",
        "--fit",
        "two-point",
        "--alpha",
        "1e6",
        "--dtype",
        "float16",
        "--out",
        str(out),
    ]
    refused(
        argv, capsys, f"{out}: tensor {UP!r}", "16 of 16 entries", "beyond the float16 range ±65504"
    )
    assert snapshot(ones) == before  # no output, no hidden tmp dir


def test_an_overflowing_ablation_is_refused(ones, capsys):
    before = snapshot(ones)
    out = ones / "ablated"
    argv = [
        "ablate",
        "--base",
        str(ones / "step_10"),
        "--checkpoint",
        str(ones / "step_20"),
        "--rank",
        "1",
        "--lam",
        "1e6",
        "--dtype",
        "float16",
        "--out",
        str(out),
    ]
    refused(
        argv,
        capsys,
        f"{out}: tensor {UP!r}",
        "non-finite in float16",
        "beyond the float16 range ±65504",
    )
    assert snapshot(ones) == before


def test_a_cast_that_fits_is_written_and_read_back(ones, capsys):
    out = ones / "pred"
    argv = [
        "extrapolate",
        "weight",
        f"10={ones / 'step_10'}",
        f"20={ones / 'step_20'}",
        "--fit",
        "two-point",
        "--alpha",
        "1e3",
        "--dtype",
        "float16",
        "--out",
        str(out),
    ]
    assert main(argv) == 0
    with ModelReader(out) as r:
        assert r.dtype(UP) == torch.float16
        torch.testing.assert_close(r.get(UP), torch.full((4, 4), 101.0), rtol=1e-3, atol=0)


def test_the_writer_refuses_non_finite_tensors(tmp_path):
    template = write_model(tmp_path / "template", {UP: torch.ones(2, 2)})
    with ModelWriter(tmp_path / "out", template) as writer:
        writer.add("a", torch.ones(3))
        with pytest.raises(ValueError, match=r"out: tensor 'b' .* 1 of 2 .*non-finite values"):
            writer.add("b", torch.tensor([1.0, float("nan")]))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["template"]


# ---------------------------------------------------------------------------------------
# ΔW from bf16 / fp16 weights


@pytest.fixture
def low(tmp_path: Path) -> Path:
    """An fp32 base and base + a small rank-1 update, stored in fp32, bf16 and fp16."""
    g = torch.Generator().manual_seed(0)
    w0 = {k: 0.02 * torch.randn(16, 16, generator=g) for k in (UP, Q)}
    u, v = torch.randn(16, 1, generator=g), torch.randn(1, 16, generator=g)
    w1 = {k: w + 1e-6 * u @ v for k, w in w0.items()}
    write_model(tmp_path / "base", w0)
    write_model(tmp_path / "fp32", w1)
    write_model(tmp_path / "bf16", {k: w.to(torch.bfloat16) for k, w in w1.items()})
    write_model(tmp_path / "fp16", {k: w.to(torch.float16) for k, w in w1.items()})
    return tmp_path


def spectrum(low: Path, ckpt: str, *extra: str) -> list[str]:
    base, ck = low / "base", low / ckpt
    out = low / f"spectrum_{ckpt}.csv"
    return [
        "spectrum",
        "--base",
        str(base),
        "--checkpoint",
        str(ck),
        "--k",
        "2",
        "--out",
        str(out),
        *extra,
    ]


def test_spectrum_of_fp32_sees_the_rank_1_update(low):
    assert main(spectrum(low, "fp32")) == 0
    table = pd.read_csv(low / "spectrum_fp32.csv")
    assert table["energy_share_k"].min() > 0.999


def delta_w_commands(low: Path, ckpt: str) -> dict[str, list[str]]:
    base, ck, fp32 = low / "base", low / ckpt, low / "fp32"
    out = str(low / "out")
    pairs = [f"0={base}", f"10={fp32}", f"20={ck}"]
    return {
        "spectrum": spectrum(low, ckpt),
        "ablate": [
            "ablate",
            "--base",
            str(base),
            "--checkpoint",
            str(ck),
            "--rank",
            "1",
            "--out",
            out,
        ],
        "weight": ["extrapolate", "weight", *pairs, "--target-step", "40", "--out", out],
        "expo": ["extrapolate", "expo", *pairs[::2], "--alpha", "1", "--out", out],
        "relex": ["extrapolate", "relex", *pairs, "--target-step", "40", "--out", out],
        "alpharl": [
            "extrapolate",
            "alpharl",
            *pairs,
            "--accuracy",
            "10=0.2",
            "--accuracy",
            "20=0.3",
            "--target",
            "0.5",
            "--out",
            out,
        ],
        "linearity weights": ["linearity", "weights", *pairs, "--out", f"{out}.csv"],
    }


@pytest.mark.parametrize("ckpt", ["bf16", "fp16"])
@pytest.mark.parametrize(
    "command", ["spectrum", "ablate", "weight", "expo", "relex", "alpharl", "linearity weights"]
)
def test_delta_w_from_low_precision_is_refused(low, capsys, ckpt, command):
    before = snapshot(low)
    dtype = {"bf16": "bfloat16", "fp16": "float16"}[ckpt]
    refused(
        delta_w_commands(low, ckpt)[command],
        capsys,
        f"error: {low / ckpt}: weights stored in {dtype}",
        "(e.g. tensor 'model.layers.0.",
        "2 of 2 tensors",
        "--allow-low-precision",
    )
    assert snapshot(low) == before


def test_low_precision_is_accepted_with_the_flag_and_a_warning(low, capsys):
    assert main(spectrum(low, "bf16", "--allow-low-precision")) == 0
    err = capsys.readouterr().err
    assert err.startswith(f"rlpredict: warning: {low / 'bf16'}: weights stored in bfloat16")
    # What the refusal protects against: the bf16 rounding swamps the rank-1 update.
    assert pd.read_csv(low / "spectrum_bf16.csv")["energy_share_k"].max() < 0.5


def test_a_bf16_output_from_fp32_inputs_is_not_refused(low, capsys):
    out = low / "ablated"
    argv = [
        "ablate",
        "--base",
        str(low / "base"),
        "--checkpoint",
        str(low / "fp32"),
        "--rank",
        "1",
        "--dtype",
        "bfloat16",
        "--out",
        str(out),
    ]
    assert main(argv) == 0
    assert "rlpredict: warning" not in capsys.readouterr().err
    with ModelReader(out) as r:
        assert r.dtype(UP) == torch.bfloat16
    assert load_file(out / "model.safetensors")[UP].dtype == torch.bfloat16


def test_a_bf16_base_with_fp32_checkpoints_is_accepted(tmp_path: Path, capsys):
    """Training starts from the bf16 base's exact values, so ΔW against it is exact."""
    g = torch.Generator().manual_seed(1)
    w0 = {k: (0.02 * torch.randn(16, 16, generator=g)).to(torch.bfloat16) for k in (UP, Q)}
    u, v = torch.randn(16, 1, generator=g), torch.randn(1, 16, generator=g)
    write_model(tmp_path / "base", w0)
    write_model(tmp_path / "step", {k: w.float() + 1e-6 * u @ v for k, w in w0.items()})
    out = tmp_path / "spectrum.csv"
    for argv in (
        ["--base", str(tmp_path / "base"), "--checkpoint", str(tmp_path / "step")],
        ["--base", str(tmp_path / "step"), "--checkpoint", str(tmp_path / "base")],
    ):
        code = main(["spectrum", *argv, "--k", "2", "--out", str(out)])
        err = capsys.readouterr().err
        if argv[1].endswith("base"):
            assert code == 0, err
            assert "warning" not in err
            assert pd.read_csv(out)["energy_share_k"].min() > 0.999
        else:  # the bf16 dir is the trained one now: refused
            assert code == 2
            assert f"{tmp_path / 'base'}: weights stored in bfloat16" in err
