"""Reading, validating and writing HF model dirs on real files (tiny random Qwen2 models)."""

from __future__ import annotations

import json
import re
import struct
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
    tied_output_embedding,
)
from rlpredict.cli import EXIT_BAD_INPUT
from rlpredict.cli import main as cli_main


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
    with pytest.raises(
        CheckpointError, match=rf"index.json: tensor 'model.extra.weight' is mapped to .*{shard}"
    ):
        ModelReader(path)
    index["weight_map"]["model.extra.weight"] = "model-00099-of-00099.safetensors"
    index_path.write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match=r"index.json: names shard model-00099-of-00099"):
        ModelReader(path)


def test_index_and_shards_must_agree(tmp_path):
    path = tmp_path / "m"
    save_model(path, shard="20KB")
    index_path = path / "model.safetensors.index.json"
    good = json.loads(index_path.read_text())
    norm_shard = good["weight_map"]["model.norm.weight"]
    other_shard = next(s for s in good["weight_map"].values() if s != norm_shard)

    stale = json.loads(json.dumps(good))
    del stale["weight_map"]["model.norm.weight"]
    index_path.write_text(json.dumps(stale))
    with pytest.raises(
        CheckpointError,
        match=rf"index.json: tensor 'model.norm.weight' stored in {norm_shard} is missing "
        "from weight_map",
    ):
        ModelReader(path)

    wrong = json.loads(json.dumps(good))
    wrong["weight_map"]["model.norm.weight"] = other_shard
    index_path.write_text(json.dumps(wrong))
    with pytest.raises(
        CheckpointError,
        match=rf"index.json: tensor 'model.norm.weight' is mapped to {other_shard} but "
        rf"stored in {norm_shard}",
    ):
        ModelReader(path)

    # A shard the index does not name, and a single-file model beside the index.
    unnamed = json.loads(json.dumps(good))
    unnamed["weight_map"] = {k: v for k, v in good["weight_map"].items() if v != norm_shard}
    index_path.write_text(json.dumps(unnamed))
    with pytest.raises(CheckpointError, match=rf"index.json: .*{norm_shard} is not a shard"):
        ModelReader(path)
    index_path.write_text(json.dumps(good))
    (path / "model.safetensors").write_bytes((path / norm_shard).read_bytes())
    with pytest.raises(CheckpointError, match=r"index.json: .*/model.safetensors is not a shard"):
        ModelReader(path)
    (path / "model.safetensors").unlink()

    # The same tensor in two shards.
    tensors = load_file(path / other_shard)
    tensors["model.norm.weight"] = torch.ones(32)
    save_file(tensors, path / other_shard, metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=r"tensor 'model.norm.weight' is stored twice"):
        ModelReader(path)


# --- malformed safetensors files: the safetensors library's validation ------------------


def split_safetensors(path: Path) -> tuple[dict, bytes]:
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8 : 8 + n]), raw[8 + n :]


def write_safetensors(path: Path, header: dict, data: bytes) -> None:
    """A safetensors file with a hand-made header, padded to 8 bytes like the library's."""
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)


def two_tensor_file(path: Path) -> tuple[dict, bytes]:
    path.mkdir()
    (path / "config.json").write_text('{"model_type": "qwen2"}')
    weights = path / "model.safetensors"
    save_file({"a.weight": torch.ones(2, 3), "b.weight": torch.zeros(2, 3)}, weights)
    return split_safetensors(weights)


def test_overlapping_gapped_and_uncovered_offsets_are_refused(tmp_path):
    cases = {}
    header, data = two_tensor_file(tmp_path / "overlap")
    header["b.weight"]["data_offsets"] = header["a.weight"]["data_offsets"]
    cases["overlap"] = (header, data, "invalid offset for tensor `[ab].weight`")
    header, data = two_tensor_file(tmp_path / "gap")
    header["b.weight"]["data_offsets"] = [32, 56]
    cases["gap"] = (header, data[:24] + bytes(8) + data[24:], "invalid offset")
    header, data = two_tensor_file(tmp_path / "uncovered")
    cases["uncovered"] = (header, data + bytes(8), "not fully covered")
    header, data = two_tensor_file(tmp_path / "past_end")
    cases["past_end"] = (header, data[:40], "truncated safetensors file")
    for name, (header, data, problem) in cases.items():
        weights = tmp_path / name / "model.safetensors"
        write_safetensors(weights, header, data)
        with pytest.raises(CheckpointError, match=rf"{name}/model.safetensors: .*{problem}"):
            ModelReader(tmp_path / name)


def test_malformed_shard_is_named(tmp_path):
    path = tmp_path / "m"
    save_model(path, shard="20KB")
    shard = sorted(path.glob("model-*.safetensors"))[1]
    header, data = split_safetensors(shard)
    names = [n for n in header if n != "__metadata__"]
    header[names[1]]["data_offsets"] = header[names[0]]["data_offsets"]
    write_safetensors(shard, header, data)
    with pytest.raises(CheckpointError, match=rf"{shard.name}: invalid safetensors file"):
        ModelReader(path)


# --- tied embeddings --------------------------------------------------------------------


def store_lm_head(path: Path, lm_head: torch.Tensor | None = None) -> None:
    """Rewrite a tied model's file to also store lm_head.weight (as some hub models do)."""
    tensors = load_file(path / "model.safetensors")
    embed = tensors["model.embed_tokens.weight"]
    tensors["lm_head.weight"] = (embed if lm_head is None else lm_head).clone()
    save_file(tensors, path / "model.safetensors", metadata={"format": "pt"})


def test_tied_output_embedding_rule():
    names = ["model.embed_tokens.weight", "lm_head.weight", "model.norm.weight"]
    pair = ("lm_head.weight", "model.embed_tokens.weight")
    assert tied_output_embedding({"tie_word_embeddings": True}, names) == pair
    assert tied_output_embedding({"tie_word_embeddings": False}, names) is None
    assert tied_output_embedding({}, names) is None
    nested = {"tie_word_embeddings": False, "text_config": {"tie_word_embeddings": True}}
    assert tied_output_embedding(nested, names) == pair
    assert tied_output_embedding({"tie_word_embeddings": True}, names[1:]) is None
    assert tied_output_embedding({"tie_word_embeddings": True}, names[::2]) is None
    vlm = ["model.language_model.embed_tokens.weight", "lm_head.weight"]
    assert tied_output_embedding({"text_config": {"tie_word_embeddings": True}}, vlm) == (
        "lm_head.weight",
        vlm[0],
    )


def test_tied_file_storing_lm_head_reads_like_save_pretrained(base, tmp_path):
    path, state = base
    store_lm_head(path)
    assert "lm_head.weight" in load_file(path / "model.safetensors")
    plain = tmp_path / "plain"
    save_model(plain)
    with ModelReader(path) as stored, ModelReader(plain) as omitted:
        assert stored.names() == omitted.names()
        assert "lm_head.weight" not in stored
        check_compatible(stored, omitted)
        name = "model.embed_tokens.weight"
        assert torch.equal(stored.get(name), state[name])


def test_tied_file_with_a_different_lm_head_is_refused(base):
    path, state = base
    store_lm_head(path, state["model.embed_tokens.weight"] + 1e-6)
    with pytest.raises(
        CheckpointError,
        match=r"base/model.safetensors: config.json ties 'lm_head.weight' to "
        r"'model.embed_tokens.weight' .* differs",
    ):
        ModelReader(path)


def test_untied_lm_head_is_a_tensor_of_its_own(tmp_path):
    state = save_model(tmp_path / "m", tie_word_embeddings=False)
    with ModelReader(tmp_path / "m") as reader:
        assert "lm_head.weight" in reader
        assert torch.equal(reader.get("lm_head.weight"), state["lm_head.weight"])


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


# --- the instances through the CLI: exit 2, one line, no output, inputs unchanged --

STEPS = (0, 10, 20)


def linear_run(root: Path, tensors: dict[str, torch.Tensor], shards: list[list[str]]) -> Path:
    """Dirs step_{0,10,20} holding W(t) = W0 + t·1e-3, one safetensors file per name group
    (with an index when there are several)."""
    for step in STEPS:
        d = root / f"step_{step}"
        d.mkdir(parents=True)
        (d / "config.json").write_text('{"model_type": "qwen2", "tie_word_embeddings": false}')
        state = {k: v + step * 1e-3 for k, v in tensors.items()}
        if len(shards) == 1:
            save_file(state, d / "model.safetensors", metadata={"format": "pt"})
            continue
        weight_map = {}
        for i, names in enumerate(shards):
            file = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
            save_file({n: state[n] for n in names}, d / file, metadata={"format": "pt"})
            weight_map.update(dict.fromkeys(names, file))
        index = {"metadata": {}, "weight_map": weight_map}
        (d / "model.safetensors.index.json").write_text(json.dumps(index))
    return root


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def extrapolate_fails(run: Path, out: Path, capsys) -> str:
    before = snapshot(run)
    pairs = [f"{s}={run / f'step_{s}'}" for s in STEPS]
    argv = ["extrapolate", "weight", *pairs, "--target-step", "100", "--out", str(out)]
    assert cli_main(argv) == EXIT_BAD_INPUT
    err = capsys.readouterr().err.strip()
    assert err.startswith("rlpredict: error: ") and "\n" not in err
    assert not out.exists() and list(out.parent.glob(f".{out.name}*")) == []
    assert snapshot(run) == before
    return err


def test_stale_index_stops_the_cli_naming_index_and_tensor(tmp_path, capsys):
    g = torch.Generator().manual_seed(0)
    tensors = {
        "model.layers.0.mlp.up_proj.weight": torch.randn(8, 4, generator=g),
        "model.layers.0.mlp.down_proj.weight": torch.randn(4, 8, generator=g),
        "model.norm.weight": torch.randn(4, generator=g),
    }
    run = linear_run(tmp_path / "run", tensors, [[*tensors][:1], [*tensors][1:]])
    for step in STEPS:
        index_path = run / f"step_{step}" / "model.safetensors.index.json"
        index = json.loads(index_path.read_text())
        del index["weight_map"]["model.norm.weight"]
        index_path.write_text(json.dumps(index))
    err = extrapolate_fails(run, tmp_path / "out", capsys)
    # every step's index is stale; whichever is read first is named
    stale = r"step_(0|10|20)/model\.safetensors\.index\.json: tensor 'model\.norm\.weight'"
    assert re.search(stale, err)
    assert "missing from weight_map" in err


def test_overlapping_offsets_stop_the_cli_naming_the_file(tmp_path, capsys):
    g = torch.Generator().manual_seed(0)
    tensors = {
        "a.weight": torch.randn(4, 4, generator=g),
        "b.weight": torch.randn(4, 4, generator=g),
    }
    run = linear_run(tmp_path / "run", tensors, [[*tensors]])
    weights = run / "step_20" / "model.safetensors"
    header, data = split_safetensors(weights)
    header["b.weight"]["data_offsets"] = header["a.weight"]["data_offsets"]
    write_safetensors(weights, header, data)
    err = extrapolate_fails(run, tmp_path / "out", capsys)
    assert f"{weights}: invalid safetensors file" in err and "invalid offset" in err
