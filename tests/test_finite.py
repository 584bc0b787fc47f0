"""One finiteness check (``checkpoints.check_finite``) for tensors read, computed and written:
its count, its message, and the messages of every place that uses it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from rlpredict.checkpoints import CheckpointError, ModelReader, check_finite, count_non_finite
from rlpredict.extrapolate import extrapolate_weights
from rlpredict.spectral import top_k_svd
from rlpredict.train.verl_checkpoints import _checked_fp32

UP = "model.layers.0.mlp.up_proj.weight"


def write_model(path: Path, tensors: dict[str, torch.Tensor]) -> Path:
    """A model dir holding ``tensors`` (stored in their own dtypes)."""
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps({"model_type": "qwen2"}) + "\n")
    save_file({k: v.contiguous() for k, v in tensors.items()}, path / "model.safetensors")
    return path


def with_bad(shape: tuple[int, ...], values: list[float], dtype=torch.float32) -> torch.Tensor:
    """A tensor of ones whose first entries are ``values``."""
    t = torch.ones(shape, dtype=dtype)
    t.view(-1)[: len(values)] = torch.tensor(values, dtype=dtype)
    return t


# ---------------------------------------------------------------------------------------
# count_non_finite, check_finite


@pytest.mark.parametrize(
    ("tensor", "expected"),
    [
        (torch.ones(3, 4), 0),
        (torch.empty(0), 0),
        (with_bad((3, 4), [float("nan")]), 1),
        (with_bad((3, 4), [float("inf"), float("-inf"), float("nan")]), 3),
        (with_bad((5,), [float("nan")], torch.bfloat16), 1),
        (with_bad((5,), [float("inf")], torch.float16), 1),
        (torch.full((4,), 3e38), 0),  # the sum overflows; every entry is finite
        (torch.arange(6), 0),  # integers are always finite
        (with_bad((3, 2**20 + 5), [float("nan")] * 7), 7),  # counted over several chunks
    ],
)
def test_count_non_finite(tensor, expected):
    assert count_non_finite(tensor) == expected


def test_check_finite_names_the_place_and_the_count():
    check_finite(torch.ones(3), "anything")
    check_finite(torch.full((4,), 3e38), "anything")
    bad = with_bad((2, 3), [float("nan"), float("inf")])
    with pytest.raises(CheckpointError, match=r"^d/model.safetensors: tensor 'w' has 2 non-finite"):
        check_finite(bad, "d/model.safetensors: tensor 'w'")
    with pytest.raises(ValueError, match=r"^the output has 2 non-finite values$"):
        check_finite(bad, "the output", error=ValueError)


# ---------------------------------------------------------------------------------------
# Its users


def test_the_reader_refuses_a_stored_non_finite_tensor(tmp_path):
    model = write_model(tmp_path / "m", {UP: with_bad((4, 4), [float("nan")] * 3)})
    with ModelReader(model) as reader, pytest.raises(CheckpointError) as err:
        reader.get(UP)
    assert str(err.value) == f"{model / 'model.safetensors'}: tensor {UP!r} has 3 non-finite values"


def test_the_reader_accepts_finite_values_whose_sum_overflows(tmp_path):
    model = write_model(tmp_path / "m", {UP: torch.full((4, 4), 3e38)})
    with ModelReader(model) as reader:
        assert torch.equal(reader.get(UP), torch.full((4, 4), 3e38))


def test_top_k_svd_refuses_a_non_finite_matrix():
    with pytest.raises(ValueError, match=r"^top_k_svd: the 2×3 matrix has 2 non-finite values$"):
        top_k_svd(with_bad((2, 3), [float("nan"), float("inf")]), 1)


def test_an_extrapolation_that_overflows_names_the_output_and_leaves_nothing(tmp_path):
    steps = {t: write_model(tmp_path / f"step_{t}", {UP: torch.full((4, 4), v)}) for t, v in
             ((10, 1.0), (20, 1e30))}  # fmt: skip
    out = tmp_path / "pred"
    with pytest.raises(ValueError, match=rf"^{out}: extrapolated tensor {UP!r} has 16 non-finite"):
        extrapolate_weights("two-point", steps, None, out, alpha=1e38, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_10", "step_20"]


def test_a_verl_shard_with_non_finite_values_is_refused(tmp_path):
    with pytest.raises(CheckpointError, match=rf"^{tmp_path}: tensor 'w' has 1 non-finite values$"):
        _checked_fp32("w", with_bad((3,), [float("inf")]), tmp_path)
    assert torch.equal(_checked_fp32("n", torch.arange(3), tmp_path), torch.arange(3))
