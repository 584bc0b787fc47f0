"""`rlpredict extrapolate` and `rlpredict linearity` on tiny Qwen2 checkpoints along the exactly
linear trajectory W(t) = W_0 + t·D (D rank-1 for every matrix, so AlphaRL can recover it too)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file, save_file
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

from rlpredict.cli import COMMANDS, main

WINDOW = [10, 20, 30, 40]
T = 100
PROJ = r"mlp\.(gate|up|down)_proj\.weight$"


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def build_tokenizer() -> PreTrainedTokenizerFast:
    vocab = {"<pad>": 0, "<eos>": 1, "<unk>": 2}
    for ch in "0123456789+=":
        vocab[ch] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>"
    )


def tiny_model(seed: int, **kw) -> Qwen2ForCausalLM:
    sizes = dict(
        vocab_size=15,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=32,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=None,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    return Qwen2ForCausalLM(Qwen2Config(**{**sizes, **kw}))


class Run:
    """Checkpoint dirs of W(t) = W_0 + t·D and the exact W(t) in float64."""

    def __init__(self, root: Path):
        self.root = root
        base = root / "step_0"
        tiny_model(0).save_pretrained(base)
        build_tokenizer().save_pretrained(base)
        self.w0 = {k: v.double() for k, v in load_file(base / "model.safetensors").items()}
        g = torch.Generator().manual_seed(1)
        self.d = {}
        for k, v in self.w0.items():
            if v.dim() == 2:  # rank-1 slope σ·u vᵀ
                u = torch.randn(v.shape[0], 1, generator=g, dtype=torch.float64)
                w = torch.randn(1, v.shape[1], generator=g, dtype=torch.float64)
                self.d[k] = 1e-3 * u @ w
            else:
                self.d[k] = 1e-3 * torch.randn(v.shape, generator=g, dtype=torch.float64)
        self.dirs = {0: base}
        for t in WINDOW:
            out = root / f"step_{t}"
            out.mkdir()
            for name in ("config.json", "generation_config.json"):
                shutil.copyfile(base / name, out / name)
            state = {k: v.float().contiguous() for k, v in self.at(t).items()}
            save_file(state, out / "model.safetensors", metadata={"format": "pt"})
            self.dirs[t] = out

    def at(self, t: float) -> dict[str, torch.Tensor]:
        return {k: self.w0[k] + t * self.d[k] for k in self.w0}

    def pairs(self, steps=(0, *WINDOW)) -> list[str]:
        return [f"{s}={self.dirs[s]}" for s in steps]


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Run:
    return Run(tmp_path_factory.mktemp("run"))


def assert_model_is(out: Path, expected: dict[str, torch.Tensor]) -> None:
    got = load_file(out / "model.safetensors")
    assert set(got) == set(expected)
    for k, v in expected.items():
        assert got[k].dtype == torch.float32
        torch.testing.assert_close(got[k].double(), v, rtol=1e-5, atol=2e-6, msg=k)


def test_commands_are_registered():
    assert {"ablate", "spectrum", "extrapolate", "linearity"} <= set(COMMANDS)


@pytest.mark.parametrize(
    "args",
    [
        ["weight", "--fit", "lstsq-free", "--target-step", str(T)],
        ["weight", "--fit", "lstsq-anchored", "--target-step", str(T)],
        ["weight", "--fit", "two-point", "--target-step", str(T)],
        ["relex", "--target-step", str(T)],
        ["expo", "--alpha", "1.5"],  # θ₁ = W(40): 40 + 1.5·40 = 100
    ],
)
def test_extrapolation_recovers_the_line(run, tmp_path, capsys, args):
    out = tmp_path / "pred"
    argv = ["extrapolate", args[0], *run.pairs(), *args[1:], "--no-copy-norms", "--out", str(out)]
    assert main(argv) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    assert_model_is(out, run.at(T))


def test_weight_copies_norms_by_default_and_uses_the_lr_integral(run, tmp_path):
    # constant schedule: the lr integral is proportional to the step, same answer as steps
    out = tmp_path / "pred"
    pairs = run.pairs(WINDOW)
    lr = ["--time", "lr", "--lr-schedule", "constant", "--lr", "1e-6", "--total-steps", "200"]
    assert (
        main(["extrapolate", "weight", *pairs, "--target-step", "100", *lr, "--out", str(out)]) == 0
    )
    expected = run.at(T)
    last = run.at(WINDOW[-1])
    expected = {k: last[k] if "norm" in k else v for k, v in expected.items()}
    assert_model_is(out, expected)


def test_alpharl_forecast_recovers_the_final_update(run, tmp_path, capsys):
    out, fits = tmp_path / "alpharl", tmp_path / "fits.csv"
    acc = [f"--accuracy={t}={0.2 + 0.004 * t:g}" for t in WINDOW]  # forecast at T: 0.6
    argv = ["extrapolate", "alpharl", *run.pairs(), *acc, "--final-step", str(T)]
    assert main([*argv, "--modules", PROJ, "--fits", str(fits), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "target forecast y* = 0.6000" in printed and "6 matrices" in printed
    got = load_file(out / "model.safetensors")
    for k, w0 in run.w0.items():
        if k.endswith(("gate_proj.weight", "up_proj.weight", "down_proj.weight")):
            update, truth = got[k].double() - w0, T * run.d[k]
            rel = float(torch.linalg.norm(update - truth) / torch.linalg.norm(truth))
            assert rel < 1e-3, (k, rel)
        else:  # outside the module set: the base value
            assert torch.equal(got[k], w0.float()), k
    table = pd.read_csv(fits)
    assert len(table) == 6 and (table["r2"] > 0.999).all()


def test_alpharl_oracle_uses_the_final_accuracy(run, tmp_path, capsys):
    out = tmp_path / "alpharl"
    acc = [f"--accuracy={t}={0.2 + 0.004 * t:g}" for t in WINDOW]
    argv = ["extrapolate", "alpharl", *run.pairs(), *acc, "--target", "oracle"]
    assert main([*argv, "--final-accuracy", "0.6", "--modules", PROJ, "--out", str(out)]) == 0
    assert "oracle (uses the final accuracy) y* = 0.6000" in capsys.readouterr().out
    k = "model.layers.1.mlp.up_proj.weight"
    update = load_file(out / "model.safetensors")[k].double() - run.w0[k]
    torch.testing.assert_close(update, T * run.d[k], rtol=0, atol=1e-2 * float(update.abs().max()))


def test_linearity_weights_is_one_on_a_line(run, tmp_path, capsys):
    out = tmp_path / "r2.csv"
    assert main(["linearity", "weights", *run.pairs(), "--out", str(out), "--seed", "3"]) == 0
    printed = capsys.readouterr().out
    assert "median R² 1.0000" in printed and "fraction R² > 0.7: 1.0000" in printed
    table = pd.read_csv(out)
    assert len(table) > 100 and table["r2"].min() > 0.999
    assert {"tensor", "index", "change", "slope", "r2"} <= set(table.columns)


@pytest.mark.parametrize("suffix", [".txt", ".jsonl"])
def test_linearity_logprobs_writes_the_token_table(run, tmp_path, capsys, suffix):
    prompts = ["1+2=", "3+4=", "12+9="]
    path = tmp_path / f"prompts{suffix}"
    lines = [json.dumps({"prompt": p}) if suffix == ".jsonl" else p for p in prompts]
    path.write_text("\n".join(lines) + "\n")
    out = tmp_path / "tokens.parquet"
    argv = ["linearity", "logprobs", *run.pairs(), "--prompts", str(path), "--out", str(out)]
    assert main([*argv, "--max-new-tokens", "6", "--min-change", "0"]) == 0
    printed = capsys.readouterr().out
    assert "token log-probs" in printed and "median R²" in printed
    table = pd.read_parquet(out)
    assert len(table) > 0 and set(table["probe"]) <= {0, 1, 2}
    assert {"probe", "position", "token_id", "change", "r2"} <= set(table.columns)


def test_the_installed_executable(run, tmp_path):
    exe = Path(sys.executable).with_name("rlpredict")
    out = tmp_path / "pred"
    argv = [str(exe), "extrapolate", "relex", *run.pairs(), "--target-step", str(T)]
    done = subprocess.run(
        [*argv, "--out", str(out)], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    assert_model_is(out, run.at(T))
    bad = subprocess.run(
        [str(exe), "extrapolate", "relex", "x=y", "--target-step", "5", "--out", str(out) + "2"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1
    assert bad.stderr.startswith("rlpredict: error: malformed checkpoint 'x=y'")


@pytest.fixture(scope="module")
def mismatched(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("other") / "wide"
    tiny_model(0, intermediate_size=48).save_pretrained(path)
    return path


ACC = ["--accuracy", "10=0.1", "--accuracy", "20=0.2", "--accuracy", "30=0.3"]
ERRORS = {
    "one checkpoint for lstsq": (["weight", "40"], ["--target-step", "100"], "at least 2"),
    "one checkpoint for relex": (["relex", "0", "40"], ["--target-step", "100"], "at least 2"),
    "two checkpoints for alpharl": (["alpharl", "0", "40"], ["--final-step", "100"], "at least 2"),
    "target inside the window": (["weight", "10", "20", "40"], ["--target-step", "30"], "inside"),
    "alpharl final inside": (
        ["alpharl", "0", "10", "20", "30"],
        [*ACC, "--final-step", "25"],
        "inside",
    ),
    "no accuracy labels": (
        ["alpharl", "0", "10", "20", "30"],
        ["--final-step", "100"],
        "none were given",
    ),
    "missing label": (
        ["alpharl", "0", "10", "20", "30"],
        [*ACC[:4], "--final-step", "100"],
        "missing",
    ),
    "forecast without final": (["alpharl", "0", "10", "20", "30"], ACC, "--final-step"),
    "mismatched": (
        ["relex", "0", "10", "wide"],
        ["--target-step", "100"],
        "different architecture",
    ),
    "not STEP=DIR": (["weight", "oops", "10"], ["--target-step", "100"], "malformed"),
    "not a dir": (["weight", "nowhere", "10"], ["--target-step", "100"], "not a directory"),
    "step twice": (["weight", "10", "10"], ["--target-step", "100"], "twice"),
    "alpha with lstsq": (["weight", "10", "20"], ["--alpha", "2"], "two-point only"),
    "lr without schedule": (["weight", "10", "20"], ["--target-step", "50", "--time", "lr"], "lr"),
}


def _pair(run: Run, mismatched: Path, token: str) -> str:
    if token == "oops":
        return "oops"
    if token == "nowhere":
        return f"20={run.root / 'nowhere'}"
    if token == "wide":
        return f"20={mismatched}"
    return f"{token}={run.dirs[int(token)]}"


@pytest.mark.parametrize("case", list(ERRORS))
def test_bad_input_stops_with_one_line_and_no_output(run, mismatched, tmp_path, capsys, case):
    (method, *steps), extra, needle = ERRORS[case]
    outs = tmp_path / "outs"
    outs.mkdir()
    pairs = [_pair(run, mismatched, s) for s in steps]
    argv = ["extrapolate", method, *pairs, *extra, "--out", str(outs / "pred")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("rlpredict: error: ") and err.count("\n") == 1, err
    assert needle in err, err
    assert list(outs.iterdir()) == []


def test_linearity_errors(run, tmp_path, capsys):
    pairs = run.pairs()
    cases = [
        (["weights", *pairs[:2], "--out", str(tmp_path / "r2.csv")], "at least 3"),
        (["weights", *pairs, "--out", str(tmp_path / "r2.txt")], ".parquet or .csv"),
        (["weights", "0=", *pairs[1:], "--out", str(tmp_path / "r2.csv")], "malformed"),
    ]
    bad_prompts = tmp_path / "p.jsonl"
    bad_prompts.write_text('{"text": "1+1="}\n')
    out = tmp_path / "t.csv"
    cases.append(
        (["logprobs", *pairs, "--prompts", str(bad_prompts), "--out", str(out)], "p.jsonl:1")
    )
    for argv, needle in cases:
        assert main(["linearity", *argv]) == 2
        err = capsys.readouterr().err
        assert err.startswith("rlpredict: error: ") and err.count("\n") == 1 and needle in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.jsonl"]
