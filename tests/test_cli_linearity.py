"""`rlpredict linearity` at the smallest run it accepts (3 checkpoints), the README's and the
help's example commands run literally, and a clear error when the filters keep nothing."""

from __future__ import annotations

import hashlib
import json
import re
import shlex
from pathlib import Path

import pandas as pd
import pytest
import torch
from safetensors.torch import save_file
from transformers import Qwen2Config, Qwen2ForCausalLM

from rlpredict.cli import LINEARITY_EPILOG, main
from rlpredict.model import build_tokenizer

README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def write_checkpoint(path: Path, tensors: dict[str, torch.Tensor]) -> Path:
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps({"model_type": "toy"}))
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path / "model.safetensors"))
    return path


def toy_run(root: Path, steps=(0, 10, 20), slope: float = 1e-3) -> list[str]:
    """STEP=DIR pairs of dirs step_N whose weights move linearly: W(t) = W0 + t·slope."""
    g = torch.Generator().manual_seed(0)
    w0 = {"layers.0.mlp.weight": torch.randn(64, 80, generator=g), "norm.weight": torch.ones(16)}
    return [
        f"{t}={write_checkpoint(root / f'step_{t}', {k: v + t * slope for k, v in w0.items()})}"
        for t in steps
    ]


def snapshot(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def assert_one_error_line(capsys, *needles: str) -> str:
    """The last stderr line is the one error line (progress bars may come before it)."""
    err = capsys.readouterr().err
    assert err.endswith("\n") and err.count("rlpredict: error: ") == 1, err
    line = re.split(r"[\r\n]", err.rstrip("\n"))[-1]
    assert line.startswith("rlpredict: error: "), err
    for needle in needles:
        assert needle in line, (needle, line)
    return line


# --------------------------------------------------------------------------------------
# weights: the default filters work at the minimum of 3 checkpoints


def test_issue_three_checkpoints_keep_every_moving_entry(tmp_path, capsys):
    pairs = toy_run(tmp_path / "run")
    out = tmp_path / "r2.csv"
    assert main(["linearity", "weights", *pairs, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "0 kept" not in printed and "nan" not in printed
    assert "kept over 3 checkpoints; median R² 1.0000" in printed
    table = pd.read_csv(out)
    assert len(table) == 50 + 16  # at least 50 of the 5120 matrix entries, every norm entry
    assert table["r2"].min() > 1 - 1e-6


def test_min_distinct_is_capped_at_the_number_of_checkpoints(tmp_path, capsys):
    pairs = toy_run(tmp_path / "run")
    out = tmp_path / "r2.csv"
    argv = ["linearity", "weights", *pairs, "--out", str(out), "--min-distinct", "9"]
    assert main(argv) == 0
    assert len(pd.read_csv(out)) == 50 + 16


def test_nothing_kept_is_an_error_naming_the_checkpoints_and_filters(tmp_path, capsys):
    pairs = toy_run(tmp_path / "run", slope=1e-6)  # moves 2e-5 over the run: below 1e-4
    before = snapshot(tmp_path)
    out = tmp_path / "r2.csv"
    assert main(["linearity", "weights", *pairs, "--out", str(out)]) == 2
    assert_one_error_line(
        capsys, "kept no entry", "step_0", "step_10", "step_20", "min_change=0.0001", "0 moved"
    )
    assert capsys.readouterr().out == ""
    assert snapshot(tmp_path) == before  # no output, inputs byte-identical


def test_plateau_trajectories_name_the_distinct_values_filter(tmp_path, capsys):
    """bf16-like plateaus: every entry moves, but takes only 2 values over 5 checkpoints."""
    pairs = []
    for i, t in enumerate((0, 10, 20, 30, 40)):
        w = torch.ones(100) + (0.01 if i >= 3 else 0.0)
        pairs.append(f"{t}={write_checkpoint(tmp_path / f'step_{t}', {'w.weight': w})}")
    out = tmp_path / "r2.parquet"
    assert main(["linearity", "weights", *pairs, "--out", str(out)]) == 2
    assert_one_error_line(capsys, "50 moved", "min_distinct=4", "step_40")
    assert not out.exists()
    assert main(["linearity", "weights", *pairs, "--out", str(out), "--min-distinct", "2"]) == 0
    assert len(pd.read_parquet(out)) == 50


# --------------------------------------------------------------------------------------
# The README's and the help's example commands, run as written


def build_model(seed: int, vocab_size: int) -> Qwen2ForCausalLM:
    torch.manual_seed(seed)
    config = Qwen2Config(
        vocab_size=vocab_size,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        intermediate_size=64,
        max_position_embeddings=128,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=None,
        tie_word_embeddings=True,
        initializer_range=0.3,
    )
    return Qwen2ForCausalLM(config).eval()


@pytest.fixture(scope="module")
def example_dir(tmp_path_factory) -> Path:
    """base/, run/step_{100,200,300} on a straight line between two models, prompts.jsonl."""
    root = tmp_path_factory.mktemp("example")
    tok = build_tokenizer()
    start, end = build_model(0, len(tok)), build_model(1, len(tok))
    for step, name in [(0, "base"), (100, "run/step_100"), (200, "run/step_200")]:
        _save_between(root / name, start, end, step / 300, tok)
    _save_between(root / "run/step_300", start, end, 1.0, tok)
    lines = [json.dumps({"prompt": p}) for p in ["12+3=", "7*8=", "45-9="]]
    (root / "prompts.jsonl").write_text("\n".join(lines) + "\n")
    return root


def _save_between(path: Path, start, end, frac: float, tok) -> None:
    model = build_model(0, len(tok))
    with torch.no_grad():
        for p, a, b in zip(model.parameters(), start.parameters(), end.parameters(), strict=True):
            p.copy_(torch.lerp(a, b, frac))
    model.save_pretrained(path)
    tok.save_pretrained(path)


def example_commands(text: str) -> list[list[str]]:
    """Every `rlpredict linearity ...` command in text, continuation lines joined."""
    joined = re.sub(r"\\\n\s*", " ", text)
    found = re.findall(r"^\s*(rlpredict linearity [^\n#]+)", joined, flags=re.M)
    return [shlex.split(line)[1:] for line in found]


@pytest.mark.parametrize("source", ["README.md", "rlpredict linearity --help"])
def test_the_documented_example_commands_work_as_written(source, example_dir, monkeypatch, capsys):
    text = README.read_text() if source == "README.md" else LINEARITY_EPILOG
    commands = example_commands(text)
    assert {argv[1] for argv in commands} == {"weights", "logprobs"}, commands
    monkeypatch.chdir(example_dir)
    for argv in commands:
        out = Path(argv[argv.index("--out") + 1])
        out.unlink(missing_ok=True)
        assert main(argv) == 0, (argv, capsys.readouterr().err)
        printed = capsys.readouterr().out
        assert "nan" not in printed and " 0 kept" not in printed, printed
        table = pd.read_parquet(out) if out.suffix == ".parquet" else pd.read_csv(out)
        assert len(table) > 0 and table["r2"].notna().all()


# --------------------------------------------------------------------------------------
# logprobs: no token kept is an error too


def test_logprobs_nothing_kept_is_an_error(example_dir, tmp_path, capsys):
    same = [f"{t}={example_dir / 'base'}" for t in (0, 10, 20)]  # identical checkpoints
    out = tmp_path / "tokens.csv"
    prompts = example_dir / "prompts.jsonl"
    before = snapshot(example_dir)
    argv = ["linearity", "logprobs", *same, "--prompts", str(prompts), "--out", str(out)]
    assert main([*argv, "--max-new-tokens", "4"]) == 2
    assert_one_error_line(capsys, "kept no token", "min_change=0.2", str(example_dir / "base"))
    assert not out.exists() and list(tmp_path.iterdir()) == []
    assert snapshot(example_dir) == before
