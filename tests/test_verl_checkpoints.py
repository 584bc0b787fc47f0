"""Conversion of verl checkpoints to fp32 HF dirs, on checkpoints written by verl itself.

verl's FSDPCheckpointManager saves a tiny Qwen2 wrapped with FSDP2 (``fully_shard``) on two
CPU ranks (gloo) in the separate verl environment (``make verl-env``); the converted weights
must equal the unsharded weights bit for bit in fp32. FSDP1 cannot run on a CPU here (torch
asks for an accelerator); its sharded state dict holds the same DTensor ``Shard(0)`` pieces.

Run as a script (``python tests/test_verl_checkpoints.py save OUT``) in the verl
environment, this file writes those checkpoints.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import verl_python

REPO = Path(__file__).resolve().parents[1]
VOCAB = ["<pad>", "<eos>", "<unk>", *"0123456789+="]


# ---------------------------------------------------------------------------------------
# Writer side: runs in the verl environment.


def _tiny_model_and_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    tokenizer = Tokenizer(models.WordLevel({t: i for i, t in enumerate(VOCAB)}, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>"
    )
    config = Qwen2Config(
        vocab_size=37,  # odd: the two ranks hold 19 and 18 embedding rows
        hidden_size=16,
        intermediate_size=24,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=32,
        tie_word_embeddings=True,
        architectures=["Qwen2ForCausalLM"],
    )
    return Qwen2ForCausalLM(config).float(), tok


def _save_rank(rank: int, world: int, out: str, port: int) -> None:
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from verl.utils.checkpoint.fsdp_checkpoint_manager import FSDPCheckpointManager

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    out_dir = Path(out)
    torch.manual_seed(0)
    model, tok = _tiny_model_and_tokenizer()
    if rank == 0:
        model.save_pretrained(out_dir / "base")
        tok.save_pretrained(out_dir / "base")
    mesh = init_device_mesh("cpu", (world,), mesh_dim_names=("fsdp",))
    for layer in model.model.layers:
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    data = torch.Generator().manual_seed(1)
    contents = {1: ["model", "optimizer", "extra", "hf_model"], 2: ["model", "optimizer", "extra"]}
    for step, save_contents in contents.items():
        ids = torch.randint(3, len(VOCAB), (4, 12), generator=data)
        model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        manager = FSDPCheckpointManager(
            model, optimizer, None, processing_class=tok,
            checkpoint_config={"save_contents": save_contents, "load_contents": ["model"]},
        )  # fmt: skip
        manager.save_checkpoint(str(out_dir / "verl" / f"global_step_{step}" / "actor"), None, step)
        full = {k: v.full_tensor() for k, v in model.state_dict().items()}
        if rank == 0:
            torch.save(full, out_dir / f"full_step_{step}.pt")
            (out_dir / "verl" / "latest_checkpointed_iteration.txt").write_text(str(step))
    dist.destroy_process_group()


def save_verl_checkpoints(out: Path) -> None:
    import torch.multiprocessing as mp

    # Import once before forking the ranks instead of once per rank.
    import transformers  # noqa: F401
    import verl.utils.checkpoint.fsdp_checkpoint_manager  # noqa: F401

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out.mkdir(parents=True, exist_ok=True)
    mp.start_processes(_save_rank, args=(2, str(out), port), nprocs=2, start_method="fork")


# ---------------------------------------------------------------------------------------
# Tests: run in the project environment.


@pytest.fixture(scope="module")
def verl_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("verl_run")
    result = subprocess.run(
        [str(verl_python()), __file__, "save", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return out


def reference(verl_run: Path, step: int) -> dict[str, torch.Tensor]:
    full = torch.load(verl_run / f"full_step_{step}.pt")
    full.pop("lm_head.weight")  # tied to model.embed_tokens.weight
    return full


def assert_bitwise_equal(model_dir: Path, expected: dict[str, torch.Tensor]) -> None:
    from rlpredict.checkpoints import ModelReader

    with ModelReader(model_dir) as reader:
        assert sorted(reader.names()) == sorted(expected)
        for name, tensor in expected.items():
            assert reader.dtype(name) == torch.float32, name
            assert torch.equal(reader.get(name), tensor.float()), name


def test_verl_wrote_sharded_dtensors(verl_run):
    from torch.distributed.tensor import DTensor

    actor = verl_run / "verl" / "global_step_2" / "actor"
    assert json.loads((actor / "fsdp_config.json").read_text()) == {
        "FSDP_version": 2,
        "world_size": 2,
    }
    shard = torch.load(actor / "model_world_size_2_rank_1.pt", weights_only=False)
    embed = shard["model.embed_tokens.weight"]
    assert isinstance(embed, DTensor) and embed.placements[0].is_shard(0)
    assert embed.shape == (37, 16) and embed._local_tensor.shape == (18, 16)
    assert not (actor / "huggingface" / "model.safetensors").exists()  # no hf_model at step 2
    assert (
        verl_run / "verl" / "global_step_1" / "actor" / "huggingface" / "model.safetensors"
    ).exists()


def test_convert_run_is_bit_exact_in_fp32(verl_run, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rlpredict.checkpoints import ModelReader, discover_run
    from rlpredict.train.verl_checkpoints import convert_run

    out = tmp_path / "checkpoints"
    done = convert_run(verl_run / "verl", out, base_model_dir=verl_run / "base")
    assert sorted(done) == [0, 1, 2]
    assert discover_run(out) == done
    for step in (1, 2):  # step 1 from verl's hf_model output, step 2 from the rank shards
        assert_bitwise_equal(done[step], reference(verl_run, step))
    with ModelReader(verl_run / "base") as base:
        assert_bitwise_equal(done[0], {n: base.get(n) for n in base.names()})
    config = json.loads((done[2] / "config.json").read_text())
    assert config["dtype"] == "float32" and config["tie_word_embeddings"] is True
    model = AutoModelForCausalLM.from_pretrained(done[2])
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    assert AutoTokenizer.from_pretrained(done[2]).convert_tokens_to_ids("7") == VOCAB.index("7")


def test_shards_and_hf_model_agree_bit_for_bit(verl_run, tmp_path):
    from rlpredict.train.verl_checkpoints import convert_step

    actor = verl_run / "verl" / "global_step_1" / "actor"
    from_shards = convert_step(actor, tmp_path / "shards", prefer="shards")
    assert_bitwise_equal(from_shards, reference(verl_run, 1))


def test_missing_rank_shard_is_named_and_nothing_is_left(verl_run, tmp_path):
    from rlpredict.checkpoints import CheckpointError
    from rlpredict.train.verl_checkpoints import convert_step

    actor = tmp_path / "actor"
    shutil.copytree(verl_run / "verl" / "global_step_2" / "actor", actor)
    (actor / "model_world_size_2_rank_1.pt").unlink()
    (tmp_path / "out").mkdir()
    with pytest.raises(CheckpointError, match="model_world_size_2_rank_1.pt"):
        convert_step(actor, tmp_path / "out" / "step_2")
    assert list((tmp_path / "out").iterdir()) == []


def test_tied_lm_head_differing_from_the_embedding_is_refused(verl_run, tmp_path):
    import copy

    from rlpredict.checkpoints import CheckpointError
    from rlpredict.train.verl_checkpoints import convert_step

    actor = tmp_path / "actor"
    shutil.copytree(verl_run / "verl" / "global_step_2" / "actor", actor)
    shard = actor / "model_world_size_2_rank_1.pt"
    state = torch.load(shard, weights_only=False)
    lm_head = copy.deepcopy(state["lm_head.weight"])  # shares no storage with the embedding
    lm_head._local_tensor.add_(1e-3)
    state["lm_head.weight"] = lm_head
    torch.save(state, shard)
    (tmp_path / "out").mkdir()
    with pytest.raises(CheckpointError, match=r"actor: config ties 'lm_head.weight' .*differs"):
        convert_step(actor, tmp_path / "out" / "step_2", prefer="shards")
    assert list((tmp_path / "out").iterdir()) == []


def test_bf16_weights_are_refused(verl_run, tmp_path):
    from safetensors.torch import load_file, save_file

    from rlpredict.checkpoints import CheckpointError
    from rlpredict.train.verl_checkpoints import convert_step

    actor = tmp_path / "actor"
    shutil.copytree(
        verl_run / "verl" / "global_step_1" / "actor" / "huggingface", actor / "huggingface"
    )
    weights = actor / "huggingface" / "model.safetensors"
    save_file({k: v.bfloat16() for k, v in load_file(weights).items()}, weights)
    with pytest.raises(CheckpointError, match="fp32"):
        convert_step(actor, tmp_path / "out")


def _age_device_meshes(actor: Path, keep_mesh: bool) -> None:
    """Rewrite the rank shards as a torch that stores no mesh layout would: each DeviceMesh
    without ``_layout`` and ``_rank_map`` (torch ≥ 2.9 computes ``mesh`` from them), holding
    the rank tensor as the plain ``mesh`` attribute older torch pickled (``keep_mesh``) or
    nothing at all."""
    for shard in sorted(actor.glob("model_world_size_*_rank_*.pt")):
        state = torch.load(shard, weights_only=False)
        for value in state.values():
            fields = value.device_mesh.__dict__
            if "_layout" in fields:
                ranks = value.device_mesh.mesh.clone()
                for name in ("_layout", "_rank_map", "_root_mesh", "_flatten_rank_map"):
                    fields.pop(name, None)
                if keep_mesh:
                    fields["mesh"] = ranks
        torch.save(state, shard)


@pytest.mark.parametrize("keep_mesh", [True, False], ids=["old-torch-mesh", "no-mesh"])
def test_shards_whose_device_mesh_this_torch_cannot_read_still_convert(
    verl_run, tmp_path, keep_mesh
):
    from rlpredict.train.verl_checkpoints import convert_step

    actor = tmp_path / "actor"
    shutil.copytree(verl_run / "verl" / "global_step_2" / "actor", actor)
    _age_device_meshes(actor, keep_mesh)
    state = torch.load(actor / "model_world_size_2_rank_0.pt", weights_only=False)
    with pytest.raises(AttributeError):
        state["model.embed_tokens.weight"].device_mesh.mesh  # noqa: B018 - the failing read
    out = convert_step(actor, tmp_path / "step_2", prefer="shards")
    assert_bitwise_equal(out, reference(verl_run, 2))


class _UnreadableMesh:
    @property
    def mesh(self):
        raise RuntimeError("Default process group has not been initialized")


def test_unreadable_mesh_falls_back_to_fsdp_rank_order_on_one_mesh_dim():
    from types import SimpleNamespace

    from torch.distributed.tensor import Replicate, Shard

    from rlpredict.checkpoints import CheckpointError
    from rlpredict.train.verl_checkpoints import _shard_ranks

    def dtensor(*placements):
        return SimpleNamespace(device_mesh=_UnreadableMesh(), placements=placements)

    assert _shard_ranks(dtensor(Shard(0)), 4) == ([0, 1, 2, 3], 0)
    assert _shard_ranks(dtensor(Shard(1)), 2) == ([0, 1], 1)
    assert _shard_ranks(dtensor(Replicate()), 2) == ([0], None)
    with pytest.raises(CheckpointError, match="2-D device mesh cannot be read"):
        _shard_ranks(dtensor(Replicate(), Shard(0)), 4)


def test_discovery_skips_steps_after_the_last_completed_save(verl_run, tmp_path):
    from rlpredict.train.verl_checkpoints import discover_verl_run

    run = tmp_path / "verl"
    shutil.copytree(verl_run / "verl", run)
    (run / "global_step_3" / "actor").mkdir(parents=True)  # a save that never completed
    assert sorted(discover_verl_run(run)) == [1, 2]


if __name__ == "__main__" and sys.argv[1:2] == ["save"]:
    save_verl_checkpoints(Path(sys.argv[2]))
