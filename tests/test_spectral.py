"""Top-k SVD, rank-k reconstruction, Frobenius rescale and spectrum tables."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import pytest
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from rlpredict.checkpoints import CheckpointError
from rlpredict.spectral import (
    DEFAULT_MODULE_REGEX,
    frobenius_scale,
    parse_module_name,
    rank_k_approx,
    spectrum_table,
    top_k_svd,
)


def orthonormal(rows: int, cols: int, gen: torch.Generator, dtype: torch.dtype) -> torch.Tensor:
    return torch.linalg.qr(torch.randn(rows, cols, generator=gen, dtype=dtype)).Q


def from_spectrum(
    m: int, n: int, s: torch.Tensor, seed: int, dtype: torch.dtype = torch.float64
) -> torch.Tensor:
    """U diag(s) Vᵀ with random orthonormal U, V, computed in dtype and rounded to fp32."""
    gen = torch.Generator().manual_seed(seed)
    r = len(s)
    u, v = orthonormal(m, r, gen, dtype), orthonormal(n, r, gen, dtype)
    return ((u * s.to(dtype)) @ v.T).float()


def planted_gap(m: int, n: int, kind: str, seed: int) -> torch.Tensor:
    """σ_1/σ_2 = 1.05 on a flat (Gaussian noise) or slowly decaying (power-law) spectrum."""
    r = min(m, n)
    if kind == "noise":
        gen = torch.Generator().manual_seed(seed + 1000)
        s = torch.linalg.svdvals(torch.randn(m, n, generator=gen))
    else:
        s = torch.arange(1, r + 1, dtype=torch.float32) ** -0.3
    s = s / s[1]
    s[0] = 1.05
    return from_spectrum(m, n, s, seed, torch.float32)


def assert_orthonormal_columns(x: torch.Tensor) -> None:
    eye = torch.eye(x.shape[1])
    assert torch.allclose(x.T @ x, eye, atol=1e-5)


# ---------------------------------------------------------------------------------------
# top_k_svd


@pytest.mark.parametrize("method", ["randomized", "exact", "auto"])
@pytest.mark.parametrize("shape", [(120, 300), (300, 120)])
def test_exact_rank_r_matrix_is_recovered(method, shape):
    s = torch.tensor([8.0, 5.0, 3.0, 2.0, 0.5])
    a = from_spectrum(*shape, s, seed=1)
    U, S, Vh = top_k_svd(a, 5, method=method)
    assert U.shape == (shape[0], 5) and S.shape == (5,) and Vh.shape == (5, shape[1])
    assert U.dtype == S.dtype == Vh.dtype == torch.float32
    torch.testing.assert_close(S, s, rtol=2e-6, atol=2e-6)
    assert_orthonormal_columns(U)
    assert_orthonormal_columns(Vh.T)
    err = torch.linalg.norm(rank_k_approx(U, S, Vh) - a) / torch.linalg.norm(a)
    assert err < 2e-6  # about 16 fp32 ulps


def test_top_k_of_higher_rank_matrix_is_descending_and_best_approximation():
    s = torch.linspace(4.0, 0.1, 40)
    a = from_spectrum(200, 90, s, seed=2)
    U, S, Vh = top_k_svd(a, 6, method="randomized")
    assert torch.all(S[:-1] >= S[1:])
    torch.testing.assert_close(S, s[:6], rtol=1e-5, atol=1e-5)
    # Eckart–Young: ‖A − A_k‖_F² = Σ_{i>k} σ_i².
    resid = torch.linalg.norm(a - rank_k_approx(U, S, Vh)) ** 2
    assert math.isclose(float(resid), float((s[6:] ** 2).sum()), rel_tol=1e-4)


@pytest.mark.parametrize("krylov", [True, False])
@pytest.mark.parametrize("kind", ["noise", "power"])
@pytest.mark.parametrize("shape", [(192, 640), (640, 192)])
def test_randomized_matches_exact_on_planted_gap(kind, shape, krylov):
    a = planted_gap(*shape, kind, seed=3)
    U, S, _ = top_k_svd(a, 1, method="randomized", krylov=krylov)
    Ux, Sx, _ = top_k_svd(a, 1, method="exact")
    assert abs(float(S[0] / Sx[0]) - 1) <= 1e-4
    assert abs(float(U[:, 0] @ Ux[:, 0])) >= 0.999


def test_accuracy_check_adds_iterations_on_flat_spectra():
    a = planted_gap(192, 640, "noise", seed=4)
    sx = float(top_k_svd(a, 1, method="exact")[1][0])
    fixed = float(top_k_svd(a, 1, method="randomized", n_iter=1, tol=None)[1][0])
    checked = float(top_k_svd(a, 1, method="randomized", n_iter=1)[1][0])
    assert abs(fixed / sx - 1) > 1e-3  # one iteration is not enough here...
    assert abs(checked / sx - 1) <= 1e-4  # ...and the check notices it


def test_falls_back_to_exact_when_not_converged(caplog):
    a = planted_gap(200, 300, "noise", seed=5)
    with caplog.at_level(logging.WARNING, logger="rlpredict.spectral"):
        got = top_k_svd(a, 2, method="randomized", n_iter=1, max_iter=1, tol=1e-12)
    assert "using the exact SVD" in caplog.text
    for x, y in zip(got, top_k_svd(a, 2, method="exact"), strict=True):
        assert torch.equal(x, y)


def test_auto_is_exact_for_small_and_randomized_for_large_matrices():
    small = planted_gap(100, 300, "power", seed=12)  # min(m, n) <= 32 · (k + oversample)
    large = planted_gap(200, 300, "power", seed=12)
    for x, y in zip(top_k_svd(small, 1), top_k_svd(small, 1, method="exact"), strict=True):
        assert torch.equal(x, y)
    for x, y in zip(top_k_svd(large, 1), top_k_svd(large, 1, method="randomized"), strict=True):
        assert torch.equal(x, y)


def test_same_seed_same_result_and_seed_matters():
    a = planted_gap(150, 400, "power", seed=6)
    first = top_k_svd(a, 3, method="randomized", seed=7)
    again = top_k_svd(a, 3, method="randomized", seed=7)
    other = top_k_svd(a, 3, method="randomized", seed=8)
    for x, y in zip(first, again, strict=True):
        assert torch.equal(x, y)
    assert not torch.equal(first[0], other[0])
    torch.testing.assert_close(first[1], other[1], rtol=1e-4, atol=0)


@pytest.mark.parametrize("method", ["randomized", "exact"])
def test_sign_convention(method):
    a = planted_gap(100, 200, "power", seed=9)
    U, S, Vh = top_k_svd(a, 4, method=method)
    peak = U.gather(0, U.abs().argmax(dim=0, keepdim=True))
    assert torch.all(peak > 0)
    Un, Sn, Vhn = top_k_svd(-a, 4, method=method)
    torch.testing.assert_close(Un, U, atol=1e-4, rtol=0)
    torch.testing.assert_close(Vhn, -Vh, atol=1e-4, rtol=0)


def test_input_is_cast_to_fp32_and_left_untouched():
    a = planted_gap(80, 120, "power", seed=10).double()
    before = a.clone()
    U, S, Vh = top_k_svd(a, 2)
    assert U.dtype == S.dtype == Vh.dtype == torch.float32
    assert torch.equal(a, before)


def test_zero_matrix():
    U, S, Vh = top_k_svd(torch.zeros(50, 70), 3, method="randomized")
    assert torch.equal(S, torch.zeros(3))
    assert_orthonormal_columns(U)
    assert_orthonormal_columns(Vh.T)
    assert torch.equal(rank_k_approx(U, S, Vh), torch.zeros(50, 70))


@pytest.mark.parametrize(
    ("matrix", "k", "kwargs", "message"),
    [
        (torch.zeros(3, 4, 5), 1, {}, "2-D"),
        (torch.ones(3, 4), 0, {}, "outside 1..3"),
        (torch.ones(3, 4), 4, {}, "outside 1..3"),
        (torch.ones(3, 4), 1, {"method": "lanczos"}, "unknown method"),
        (torch.ones(3, 4), 1, {"n_iter": 5, "max_iter": 2}, "n_iter <= max_iter"),
        (torch.tensor([[1.0, float("nan")], [0.0, 1.0]]), 1, {}, "non-finite"),
        (torch.tensor([[1.0, float("inf")], [0.0, 1.0]]), 1, {}, "non-finite"),
    ],
)
def test_rejects_bad_input(matrix, k, kwargs, message):
    with pytest.raises(ValueError, match=message):
        top_k_svd(matrix, k, **kwargs)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    a = planted_gap(192, 640, "power", seed=11)
    U, S, Vh = top_k_svd(a.cuda(), 2, method="randomized")
    assert U.is_cuda and S.is_cuda and Vh.is_cuda
    Uc, Sc, _ = top_k_svd(a, 2, method="randomized")
    torch.testing.assert_close(S.cpu(), Sc, rtol=1e-5, atol=0)
    assert torch.all((U.cpu() * Uc).sum(0) > 0.999)


# ---------------------------------------------------------------------------------------
# rank_k_approx, frobenius_scale


def test_rank_k_approx_known_answer():
    U = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]])
    S = torch.tensor([3.0, 2.0])
    Vh = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    expected = torch.tensor([[0.0, 3.0], [2.0, 0.0], [0.0, 0.0]])
    assert torch.equal(rank_k_approx(U, S, Vh), expected)


def test_frobenius_scale_known_answers():
    delta = torch.diag(torch.tensor([4.0, 3.0]))  # ‖ΔW‖_F = 5, σ_1 = 4
    U, S, Vh = top_k_svd(delta, 1)
    approx = rank_k_approx(U, S, Vh)
    assert frobenius_scale(delta, approx) == pytest.approx(5 / 4)
    # METHODS.md: for k = 1 the rescaled update is ‖ΔW‖_F · u_1 v_1ᵀ.
    scaled = frobenius_scale(delta, approx) * approx
    torch.testing.assert_close(scaled, 5.0 * torch.outer(U[:, 0], Vh[0]))
    assert frobenius_scale(delta, rank_k_approx(*top_k_svd(delta, 2))) == pytest.approx(1.0)
    assert frobenius_scale(delta, torch.zeros(2, 2)) == 1.0


# ---------------------------------------------------------------------------------------
# spectrum tables


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("model.layers.3.mlp.down_proj.weight", (3, "down_proj")),
        ("model.layers.12.self_attn.k_proj.weight", (12, "k_proj")),
        ("model.layers.0.self_attn.q_proj.bias", (0, "q_proj")),
        ("model.embed_tokens.weight", (None, "embed_tokens")),
        ("lm_head.weight", (None, "lm_head")),
        ("transformer.h.5.attn.c_attn.weight", (5, "c_attn")),
        ("model.norm.weight", (None, "norm")),
    ],
)
def test_parse_module_name(name, expected):
    assert parse_module_name(name) == expected


PLANTED = "model.layers.1.mlp.up_proj.weight"


def tiny_qwen2(seed: int) -> Qwen2ForCausalLM:
    config = Qwen2Config(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=40,
        max_position_embeddings=32,
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    return Qwen2ForCausalLM(config)


@pytest.fixture(scope="module")
def run_dirs(tmp_path_factory) -> tuple[Path, Path, torch.Tensor]:
    """A base model and a step_7 checkpoint: small noise everywhere, rank 1 in PLANTED."""
    root = tmp_path_factory.mktemp("run")
    model = tiny_qwen2(seed=0)
    model.save_pretrained(root / "step_0")
    gen = torch.Generator().manual_seed(1)
    params = dict(model.named_parameters())
    with torch.no_grad():
        for p in params.values():
            p.add_(1e-4 * torch.randn(p.shape, generator=gen))
        w = params[PLANTED]
        u = torch.randn(w.shape[0], generator=gen)
        v = torch.randn(w.shape[1], generator=gen)
        w.add_(0.05 * torch.outer(u, v))
    model.save_pretrained(root / "step_7")
    return root / "step_0", root / "step_7", u / u.norm()


@pytest.mark.parametrize("method", ["auto", "randomized"])
def test_spectrum_table_finds_planted_rank_one_update(run_dirs, method):
    base, ckpt, u = run_dirs
    table = spectrum_table(base, ckpt, k=4, keep_vectors=True, method=method, progress=False)
    assert len(table) == 2 * 7
    assert set(table["kind"]) == {"q_proj", "k_proj", "v_proj", "o_proj"} | {
        "gate_proj",
        "up_proj",
        "down_proj",
    }
    assert table["step"].tolist() == [7] * 14
    assert sorted(set(table["layer"])) == [0, 1]
    sigmas = table[[f"sigma_{i}" for i in range(1, 5)]].to_numpy()
    assert (sigmas[:, :-1] >= sigmas[:, 1:]).all()
    assert (table["energy_share_k"] >= table["energy_share_1"] - 1e-12).all()
    row = table.set_index("module").loc[PLANTED]
    assert (row["layer"], row["kind"], row["rows"], row["cols"]) == (1, "up_proj", 128, 64)
    assert row["energy_share_1"] > 0.999
    assert abs(torch.tensor(row["u1"], dtype=torch.float32) @ u) > 0.999
    assert len(row["v1"]) == 64
    others = table[table["module"] != PLANTED]
    assert (others["energy_share_1"] < 0.3).all()  # noise: no dominant direction


def test_spectrum_table_norms_match_direct_computation(run_dirs):
    base, ckpt, _ = run_dirs
    table = spectrum_table(base, ckpt, k=2, module_regex=r"self_attn\.k_proj", progress=False)
    from rlpredict.checkpoints import ModelReader

    with ModelReader(base) as b, ModelReader(ckpt) as c:
        names = [n for n in b.names() if "k_proj.weight" in n]
        assert table["module"].tolist() == names  # the 1-D biases are skipped
        for name, (_, row) in zip(names, table.iterrows(), strict=True):
            delta = c.get(name) - b.get(name)
            s = torch.linalg.svdvals(delta.double())
            assert row["fro_norm"] == pytest.approx(float(delta.double().norm()), rel=1e-5)
            assert row["sigma_1"] == pytest.approx(float(s[0]), rel=1e-5)
            share = float(s[0] ** 2 / (s**2).sum())
            assert row["energy_share_1"] == pytest.approx(share, rel=1e-4)


def test_spectrum_table_k_beyond_matrix_and_zero_update(run_dirs):
    base, _, _ = run_dirs
    table = spectrum_table(
        base, base, k=40, step=3, module_regex=r"k_proj\.weight$", progress=False
    )
    assert table["step"].tolist() == [3, 3]
    assert table["rows"].tolist() == [32, 32]  # 2 kv heads × head dim 16
    assert (table["sigma_32"] == 0).all() and table["sigma_33"].isna().all()
    assert (table["fro_norm"] == 0).all() and table["energy_share_1"].isna().all()
    assert "u1" not in table.columns


def test_spectrum_table_errors(run_dirs, tmp_path):
    base, ckpt, _ = run_dirs
    with pytest.raises(ValueError, match="module regex 'nothing_here' matches no 2-D tensor"):
        spectrum_table(base, ckpt, module_regex="nothing_here", progress=False)
    with pytest.raises(ValueError, match="invalid module regex"):
        spectrum_table(base, ckpt, module_regex="(", progress=False)
    with pytest.raises(CheckpointError, match="model dir not found"):
        spectrum_table(base, tmp_path / "missing", progress=False)


def test_default_regex_selects_projections_only():
    import re

    pattern = re.compile(DEFAULT_MODULE_REGEX)
    assert pattern.search("model.layers.10.self_attn.o_proj.weight")
    assert pattern.search("model.layers.0.mlp.gate_proj.weight")
    assert not pattern.search("model.layers.0.self_attn.q_proj.bias")
    assert not pattern.search("model.layers.0.input_layernorm.weight")
    assert not pattern.search("model.embed_tokens.weight")
