"""Reading, validating and writing HF model dirs on real files (tiny random Qwen2 models)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from tiny_models import tiny_config
from transformers import AutoModelForCausalLM, Qwen2ForCausalLM

from rlpredict.checkpoints import (
    CheckpointError,
    ModelReader,
    ModelWriter,
    atomic_output_dir,
    check_compatible,
    discover_run,
)


def save_model(path: Path, seed: int = 0, shard: str | None = None, **overrides) -> dict:
    """Save a random tiny Qwen2 to path; return its state dict."""
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(tiny_config(**overrides))
    kwargs = {"max_shard_size": shard} if shard else {}
    model.save_pretrained(path, **kwargs)
    (path / "tokenizer_config.json").write_text('{"model_max_length": 32}\n')
    (path / "chat_template.jinja").write_text("{{ messages }}\n")
    return {k: v.clone() for k, v in model.state_dict().items()}


def leftovers(parent: Path, name: str) -> list[str]:
    return [p.name for p in parent.iterdir() if name in p.name]


@pytest.fixture
def base(tmp_path: Path) -> tuple[Path, dict]:
    path = tmp_path / "base"
    return path, save_model(path)


def test_reader_single_file_matches_saved_model(base):
    path, state = base
    with ModelReader(path) as reader:
        assert reader.config["model_type"] == "qwen2"
        # Tied embeddings: lm_head is not in the file.
        assert set(reader.names()) == set(state) - {"lm_head.weight"}
        for name in reader.names():
            assert reader.shape(name) == tuple(state[name].shape)
            t = reader.get(name)
            assert t.dtype == torch.float32
            assert torch.equal(t, state[name])


def test_reader_sharded_matches_saved_model(tmp_path):
    state = save_model(tmp_path / "m", shard="20KB")
    assert (tmp_path / "m" / "model.safetensors.index.json").is_file()
    assert len(list((tmp_path / "m").glob("model-*.safetensors"))) > 1
    with ModelReader(tmp_path / "m") as reader:
        assert set(reader.names()) == set(state) - {"lm_head.weight"}
        for name in reader.names():
            assert torch.equal(reader.get(name), state[name])


def test_reader_converts_bf16_to_fp32(tmp_path):
    path = tmp_path / "m"
    path.mkdir()
    (path / "config.json").write_text('{"model_type": "qwen2"}')
    w = torch.randn(4, 5).to(torch.bfloat16)
    save_file({"w": w}, path / "model.safetensors")
    t = ModelReader(path).get("w")
    assert t.dtype == torch.float32
    assert torch.equal(t, w.float())


def test_writer_round_trip_sharded_loads_with_transformers(base, tmp_path):
    path, state = base
    out = tmp_path / "out"
    with ModelReader(path) as reader, ModelWriter(out, path, max_shard_bytes=30_000) as writer:
        for name in reader.names():
            writer.add(name, reader.get(name))
        assert writer.finish() == out
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 1 and shards[0] == f"model-00001-of-{len(shards):05d}.safetensors"
    assert index["metadata"]["total_size"] == sum(
        v.numel() * 4 for k, v in state.items() if k != "lm_head.weight"
    )
    for name in ("generation_config.json", "tokenizer_config.json", "chat_template.jinja"):
        assert (out / name).read_bytes() == (path / name).read_bytes()
    model = AutoModelForCausalLM.from_pretrained(out)
    loaded = model.state_dict()
    for name, value in state.items():
        assert torch.equal(loaded[name], value), name
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    assert leftovers(tmp_path, ".out.") == []


def test_writer_bf16_updates_config_dtype(base, tmp_path):
    path, state = base
    out = tmp_path / "out16"
    with ModelReader(path) as reader, ModelWriter(out, path, dtype=torch.bfloat16) as writer:
        for name in reader.names():
            writer.add(name, reader.get(name))
        writer.finish()
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    assert list(out.glob("*.index.json")) == []
    tensors = load_file(out / "model.safetensors")
    assert tensors["model.norm.weight"].dtype == torch.bfloat16
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.dtype == torch.bfloat16
    q = "model.layers.0.self_attn.q_proj.weight"
    assert torch.equal(model.state_dict()[q], state[q].to(torch.bfloat16))


def test_writer_leaves_nothing_on_error_or_without_finish(base, tmp_path):
    path, state = base
    out = tmp_path / "out"
    with pytest.raises(RuntimeError), ModelWriter(out, path) as writer:
        writer.add("a", torch.ones(3))
        raise RuntimeError("interrupted")
    with ModelWriter(out, path) as writer:
        writer.add("a", torch.ones(3))
    assert leftovers(tmp_path, "out") == []
    with ModelWriter(out, path) as writer, pytest.raises(ValueError, match="twice"):
        writer.add("a", torch.ones(3))
        writer.add("a", torch.ones(3))
    assert leftovers(tmp_path, "out") == []


def test_atomic_output_dir(tmp_path):
    out = tmp_path / "sub" / "result"
    with atomic_output_dir(out) as tmp:
        assert tmp.parent == out.parent and tmp.name.startswith(".result.tmp-")
        (tmp / "x").write_text("1")
        assert not out.exists()
    assert (out / "x").read_text() == "1"
    with pytest.raises(KeyError), atomic_output_dir(tmp_path / "bad") as tmp:
        (tmp / "x").write_text("1")
        raise KeyError("boom")
    assert leftovers(tmp_path, "bad") == []


def test_discover_run(tmp_path):
    for step in (10, 0, 5):
        (tmp_path / f"step_{step}").mkdir()
    (tmp_path / "step_x").mkdir()
    (tmp_path / ".step_20.tmp-1").mkdir()
    (tmp_path / "step_7").write_text("not a dir")
    run = discover_run(tmp_path)
    assert list(run) == [0, 5, 10]
    assert run[5] == tmp_path / "step_5"
    with pytest.raises(CheckpointError, match="not found"):
        discover_run(tmp_path / "missing")
    with pytest.raises(CheckpointError, match="no step_"):
        discover_run(tmp_path / "step_0")


# --- bad input: each names the file and the problem -----------------------------------


def test_missing_dir_config_and_weights(tmp_path):
    with pytest.raises(CheckpointError, match=r"nope: model dir not found"):
        ModelReader(tmp_path / "nope")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CheckpointError, match=r"empty: not a model dir \(config.json missing\)"):
        ModelReader(empty)
    (empty / "config.json").write_text("{}")
    (empty / "pytorch_model.bin").write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"empty: no weights file.*pytorch_model.bin"):
        ModelReader(empty)


def test_truncated_safetensors(base):
    path, _ = base
    weights = path / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[:-100])
    with pytest.raises(CheckpointError, match=r"model.safetensors: truncated safetensors file"):
        ModelReader(path)
    weights.write_bytes(data[:20])
    with pytest.raises(CheckpointError, match=r"model.safetensors: truncated"):
        ModelReader(path)
    weights.write_bytes(data[:8] + b"{not json" + data[17:])
    with pytest.raises(CheckpointError, match=r"model.safetensors: corrupt safetensors header"):
        ModelReader(path)


def test_index_naming_missing_shard_or_tensor(tmp_path):
    path = tmp_path / "m"
    save_model(path, shard="20KB")
    index_path = path / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    index["weight_map"]["model.extra.weight"] = index["weight_map"]["model.norm.weight"]
    index_path.write_text(json.dumps(index))
    shard = index["weight_map"]["model.norm.weight"]
    with pytest.raises(CheckpointError, match=rf"{shard}: tensor 'model.extra.weight'.*missing"):
        ModelReader(path)
    index["weight_map"]["model.extra.weight"] = "model-00099-of-00099.safetensors"
    index_path.write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match=r"index.json: names shard model-00099-of-00099"):
        ModelReader(path)


def test_missing_tensor_and_non_finite_values(base):
    path, state = base
    tensors = load_file(path / "model.safetensors")
    tensors["model.norm.weight"][3] = float("nan")
    tensors["model.layers.1.mlp.up_proj.weight"][0, 0] = float("inf")
    save_file(tensors, path / "model.safetensors", metadata={"format": "pt"})
    with ModelReader(path) as reader:
        with pytest.raises(CheckpointError, match=r"model.safetensors: tensor 'model.norm.weight'"):
            reader.get("model.norm.weight")
        with pytest.raises(CheckpointError, match="up_proj.weight' has 1 non-finite"):
            reader.get("model.layers.1.mlp.up_proj.weight")
        with pytest.raises(CheckpointError, match=r"base: tensor 'lm_head.weight' is missing"):
            reader.get("lm_head.weight")
        assert torch.equal(
            reader.get("model.embed_tokens.weight"), state["model.embed_tokens.weight"]
        )


def test_check_compatible(tmp_path):
    save_model(tmp_path / "a", seed=0)
    save_model(tmp_path / "b", seed=1)
    save_model(tmp_path / "deep", num_hidden_layers=3)
    a, b, deep = (
        ModelReader(tmp_path / "a"),
        ModelReader(tmp_path / "b"),
        ModelReader(tmp_path / "deep"),
    )
    check_compatible(a, b)
    with pytest.raises(CheckpointError, match=r"a vs .*deep: different architecture.*num_hidden"):
        check_compatible(a, deep)

    tensors = load_file(tmp_path / "b" / "model.safetensors")
    q = "model.layers.1.self_attn.q_proj.weight"
    tensors[q] = tensors[q][:, :16].contiguous()
    save_file(tensors, tmp_path / "b" / "model.safetensors")
    with pytest.raises(CheckpointError, match=rf"a vs .*b: tensor '{q}' has shape \[32, 32\] vs"):
        check_compatible(a, ModelReader(tmp_path / "b"))

    del tensors[q]
    save_file(tensors, tmp_path / "b" / "model.safetensors")
    with pytest.raises(CheckpointError, match=rf"tensor '{q}' is missing from .*b"):
        check_compatible(a, ModelReader(tmp_path / "b"))
