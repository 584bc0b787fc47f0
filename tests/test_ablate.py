"""Rank-k ablation (METHODS.md §1a) on real HF dirs of a tiny random Qwen2, known answers."""

from __future__ import annotations

import math
import re
from fractions import Fraction
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from tiny_models import tiny_model
from transformers import AutoModelForCausalLM

from rlpredict.ablate import ablate_model, parse_rank, rank_for
from rlpredict.checkpoints import CheckpointError, ModelReader
from rlpredict.spectral import DEFAULT_MODULE_REGEX

MATCHED = re.compile(DEFAULT_MODULE_REGEX)


def make_pair(tmp_path: Path, update, shard: str | None = None) -> tuple[Path, Path, dict, dict]:
    """Base and 'trained' dirs; update(name, param) gives each parameter's change."""
    model = tiny_model()
    model.save_pretrained(tmp_path / "base")
    w0 = {k: v.clone() for k, v in model.state_dict().items()}
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.add_(update(name, p, gen))
    kwargs = {"max_shard_size": shard} if shard else {}
    model.save_pretrained(tmp_path / "ckpt", **kwargs)
    wt = {k: v.clone() for k, v in model.state_dict().items()}
    return tmp_path / "base", tmp_path / "ckpt", w0, wt


def rank1_update(name, p, gen):
    if MATCHED.search(name):
        u = torch.randn(p.shape[0], 1, generator=gen)
        v = torch.randn(1, p.shape[1], generator=gen)
        return 0.01 * u @ v
    return 0.01 * torch.randn(p.shape, generator=gen)


def dense_update(name, p, gen):
    """Full-rank ΔW with σ_i = 0.05·0.8^i: separated singular values keep top-k well posed."""
    if not MATCHED.search(name):
        return 0.01 * torch.randn(p.shape, generator=gen)
    m, n = p.shape
    r = min(m, n)
    U = torch.linalg.qr(torch.randn(m, r, generator=gen)).Q
    V = torch.linalg.qr(torch.randn(n, r, generator=gen)).Q
    return (U * (0.05 * 0.8 ** torch.arange(r))) @ V.T


def read_all(path: Path) -> dict[str, torch.Tensor]:
    with ModelReader(path) as reader:
        return {n: reader.get(n) for n in reader.names()}


def reference(w0: torch.Tensor, wt: torch.Tensor, k: int, lam: float, scale: str):
    """METHODS.md §1a in float64 with an exact SVD: W_0 + λ·α·ΔW⁽ᵏ⁾ and α."""
    delta = wt.double() - w0.double()
    U, S, Vh = torch.linalg.svd(delta, full_matrices=False)
    approx = (U[:, :k] * S[:k]) @ Vh[:k]
    alpha = float(delta.norm() / approx.norm()) if scale == "frobenius" else 1.0
    return w0.double() + lam * alpha * approx, alpha


def assert_unmatched_are_base(out: dict, w0: dict) -> None:
    unmatched = [n for n in out if not MATCHED.search(n)]
    assert "model.embed_tokens.weight" in unmatched and "model.norm.weight" in unmatched
    for name in unmatched:
        assert torch.equal(out[name], w0[name]), name  # bit-identical


def test_rank1_ablation_of_rank1_update_reproduces_trained_weights(tmp_path):
    base, ckpt, w0, wt = make_pair(tmp_path, rank1_update)
    result = ablate_model(base, ckpt, tmp_path / "out", rank=1, progress=False)
    out = read_all(tmp_path / "out")
    assert len(result["modules"]) == 2 * 7
    for name, stats in result["modules"].items():
        assert torch.allclose(out[name], wt[name], rtol=0, atol=1e-6), name
        assert not torch.equal(out[name], w0[name])
        assert stats["k"] == 1
        assert stats["alpha"] == pytest.approx(1.0, abs=1e-5)
        assert stats["energy_share"] == pytest.approx(1.0, abs=1e-5)
    assert_unmatched_are_base(out, w0)
    # Loads as a model, with lm_head still tied to the (base) embeddings.
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    assert torch.equal(model.lm_head.weight, w0["model.embed_tokens.weight"])
    assert list(tmp_path.glob(".out*")) == []


@pytest.mark.parametrize(("scale", "lam", "k"), [("frobenius", 0.7, 2), ("none", 1.0, 3)])
def test_rescale_matches_formula(tmp_path, scale, lam, k):
    base, ckpt, w0, wt = make_pair(tmp_path, dense_update)
    result = ablate_model(
        base, ckpt, tmp_path / "out", rank=k, scale=scale, lam=lam, progress=False
    )
    out = read_all(tmp_path / "out")
    for name, stats in result["modules"].items():
        expected, alpha = reference(w0[name], wt[name], k, lam, scale)
        assert torch.allclose(out[name].double(), expected, rtol=0, atol=1e-6), name
        assert stats["alpha"] == pytest.approx(alpha, rel=1e-4)
        if scale == "frobenius":
            assert stats["alpha"] > 1.2  # the top 2 of a full-rank ΔW hold ~60 % of its energy
        else:
            assert stats["alpha"] == 1.0
        delta = (wt[name] - w0[name]).double()
        s = torch.linalg.svdvals(delta)
        assert stats["fro_norm"] == pytest.approx(float(delta.norm()), rel=1e-5)
        assert stats["energy_share"] == pytest.approx(float(s[0] ** 2 / (s**2).sum()), rel=1e-4)
        assert stats["energy_kept"] == pytest.approx(float((s[:k] ** 2).sum() / (s**2).sum()), 1e-4)
    assert_unmatched_are_base(out, w0)


def test_full_rank_is_the_checkpoint_and_percent_ranks(tmp_path):
    base, ckpt, w0, wt = make_pair(tmp_path, dense_update, shard="20KB")
    ablate_model(base, ckpt, tmp_path / "full", rank="full", progress=False)
    out = read_all(tmp_path / "full")
    for name in out:
        assert torch.equal(out[name], wt[name] if MATCHED.search(name) else w0[name]), name

    ablate_model(base, ckpt, tmp_path / "half", rank="full", lam=0.5, progress=False)
    out = read_all(tmp_path / "half")
    q = "model.layers.0.self_attn.q_proj.weight"
    assert torch.allclose(out[q], w0[q] + 0.5 * (wt[q] - w0[q]), rtol=0, atol=1e-7)

    result = ablate_model(base, ckpt, tmp_path / "pct", rank="10%", progress=False)
    ks = {name.split(".")[-2]: s["k"] for name, s in result["modules"].items()}
    # ceil(0.1 · min(m, n)): q/o 32×32 → 4, k/v 16×32 → 2, MLP 64×32 → 4
    expected_ks = dict(q_proj=4, k_proj=2, v_proj=2, o_proj=4, gate_proj=4, up_proj=4, down_proj=4)
    assert ks == expected_ks
    out = read_all(tmp_path / "pct")
    expected, _ = reference(w0[q], wt[q], 4, 1.0, "frobenius")
    assert torch.allclose(out[q].double(), expected, rtol=0, atol=1e-6)


def test_module_regex_and_output_dtype(tmp_path):
    base, ckpt, w0, wt = make_pair(tmp_path, rank1_update)
    regex = r"mlp\.down_proj\.weight$"
    result = ablate_model(
        base,
        ckpt,
        tmp_path / "out",
        rank=1,
        module_regex=regex,
        out_dtype=torch.bfloat16,
        progress=False,
    )
    assert sorted(result["modules"]) == [f"model.layers.{i}.mlp.down_proj.weight" for i in (0, 1)]
    tensors = load_file(tmp_path / "out" / "model.safetensors")
    for name, value in tensors.items():
        assert value.dtype == torch.bfloat16
        expected = wt[name] if name in result["modules"] else w0[name]
        assert torch.allclose(value.float(), expected, rtol=1e-2, atol=1e-4), name
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "out").dtype == torch.bfloat16


def test_parse_rank():
    assert parse_rank(4) == 4 and parse_rank("8") == 8 and parse_rank("full") == "full"
    assert parse_rank("10%") == Fraction(1, 10)
    assert rank_for(parse_rank("10%"), (30, 40)) == 3  # exact: 0.1 * 30 in floats ceils to 4
    assert rank_for(parse_rank("1%"), (16, 32)) == 1
    assert rank_for(parse_rank("12.5%"), (64, 32)) == 4
    assert rank_for(parse_rank("100%"), (64, 32)) == 32
    assert rank_for(parse_rank(100), (64, 32)) == 32
    assert rank_for("full", (5, 7)) == 5
    assert math.isclose(float(parse_rank("0.5%")), 0.005)
    for bad in ("0", -1, "0%", "150%", "abc", "", True, "1.5"):
        with pytest.raises(ValueError, match="invalid rank"):
            parse_rank(bad)


# --- bad input: a clear error and nothing left behind ----------------------------------


def _rewrite(path: Path, edit) -> None:
    tensors = load_file(path)
    edit(tensors)
    save_file(tensors, path, metadata={"format": "pt"})


def _shape(tensors):
    name = "model.layers.1.mlp.up_proj.weight"
    tensors[name] = tensors[name][:, :16].contiguous()


def _missing(tensors):
    del tensors["model.layers.0.self_attn.v_proj.weight"]


def _nan(tensors):
    tensors["model.layers.1.mlp.down_proj.weight"][2, 3] = float("nan")


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-64])


BAD_INPUTS = {
    "shapes": (lambda p: _rewrite(p, _shape), r"base vs .*ckpt: tensor .*up_proj.* has shape"),
    "missing tensor": (lambda p: _rewrite(p, _missing), r"v_proj.weight' is missing from .*ckpt"),
    "non-finite": (lambda p: _rewrite(p, _nan), r"ckpt/model.safetensors: .* non-finite"),
    "truncated": (_truncate, r"ckpt/model.safetensors: truncated safetensors file"),
}


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_checkpoint_stops_and_leaves_nothing(tmp_path, case):
    base, ckpt, _, _ = make_pair(tmp_path, rank1_update)
    damage, message = BAD_INPUTS[case]
    damage(ckpt / "model.safetensors")
    with pytest.raises(CheckpointError, match=message):
        ablate_model(base, ckpt, tmp_path / "out", rank=1, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["base", "ckpt"]


def test_bad_architecture_dir_and_options(tmp_path):
    base, ckpt, _, _ = make_pair(tmp_path, rank1_update)
    tiny_model(num_hidden_layers=3).save_pretrained(tmp_path / "deep")
    out = tmp_path / "out"
    with pytest.raises(CheckpointError, match=r"base vs .*deep: different architecture"):
        ablate_model(base, tmp_path / "deep", out, rank=1, progress=False)
    with pytest.raises(CheckpointError, match=r"missing: model dir not found"):
        ablate_model(base, tmp_path / "missing", out, rank=1, progress=False)
    with pytest.raises(ValueError, match=r"module regex 'lora_A' matches no 2-D tensor in .*base"):
        ablate_model(base, ckpt, out, rank=1, module_regex="lora_A", progress=False)
    with pytest.raises(ValueError, match=r"invalid module regex '\('"):
        ablate_model(base, ckpt, out, rank=1, module_regex="(", progress=False)
    with pytest.raises(ValueError, match="output dir must differ from the input"):
        ablate_model(base, ckpt, ckpt, rank=1, progress=False)
    with pytest.raises(ValueError, match="invalid scale"):
        ablate_model(base, ckpt, out, rank=1, scale="spectral", progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["base", "ckpt", "deep"]
