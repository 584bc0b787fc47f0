"""Convert verl checkpoints to fp32 Hugging Face dirs (``<out>/step_N/``), one tensor at a time.

verl writes ``<default_local_dir>/global_step_N/actor/`` holding one
``model_world_size_W_rank_R.pt`` per rank (a sharded state dict: each parameter a DTensor
whose local piece is that rank's slice, FSDP1 and FSDP2 alike), ``fsdp_config.json`` and
``huggingface/`` with config and tokenizer, plus full weights there when ``hf_model`` is in
``save_contents``.

The full weights are used when they are stored in fp32; otherwise the rank shards are read
directly and each DTensor's local pieces are concatenated along its sharded dim. verl's own
model merger is never used: it casts every tensor to bf16, which erases RL updates of
~1e-6 relative size. Actors kept in bf16 are refused for the same reason.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from rlpredict.atomic import atomic_output_dir
from rlpredict.checkpoints import (
    CheckpointError,
    ModelReader,
    ModelWriter,
    check_finite,
    tied_output_embedding,
)
from rlpredict.checkpoints import require_fp32 as refuse_low_precision
from rlpredict.runs import discover_verl_run  # torch-free, re-exported here

SHARD_RE = re.compile(r"model_world_size_(\d+)_rank_(\d+)\.pt")
STEP_DIR_RE = re.compile(r"global_step_(\d+)")
TRACKER_FILE = "latest_checkpointed_iteration.txt"  # verl's last completed save
WRAPPER_PREFIXES = ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.", "_orig_mod.")


def _has_weights(model_dir: Path) -> bool:
    return (model_dir / "model.safetensors").is_file() or (
        model_dir / "model.safetensors.index.json"
    ).is_file()


def _shard_files(actor_dir: Path) -> list[Path]:
    found = {}
    for p in actor_dir.iterdir():
        m = SHARD_RE.fullmatch(p.name)
        if m:
            found[(int(m.group(1)), int(m.group(2)))] = p
    if not found:
        raise CheckpointError(f"{actor_dir}: no model_world_size_W_rank_R.pt shards")
    sizes = {w for w, _ in found}
    config = actor_dir / "fsdp_config.json"
    if config.is_file():
        sizes = {int(json.loads(config.read_text())["world_size"])}
    if len(sizes) != 1:
        raise CheckpointError(f"{actor_dir}: shards of several world sizes {sorted(sizes)}")
    world = sizes.pop()
    missing = [r for r in range(world) if (world, r) not in found]
    if missing:
        names = ", ".join(f"model_world_size_{world}_rank_{r}.pt" for r in missing)
        raise CheckpointError(f"{actor_dir}: missing rank shard(s) {names}")
    return [found[(world, r)] for r in range(world)]


def _clean_name(name: str) -> str:
    for prefix in WRAPPER_PREFIXES:
        name = name.replace(prefix, "")
    return name


def _mesh_tensor(device_mesh) -> torch.Tensor | None:
    """The rank layout of a pickled DeviceMesh, or None when this torch cannot read it.

    torch ≥ 2.9 computes ``DeviceMesh.mesh`` from ``_layout`` and ``_rank_map``
    (torch/distributed/device_mesh.py, ``mesh`` property; ``__setstate__`` only updates
    ``__dict__``), and for a sliced sub-mesh it asks the process group for the current
    rank, which a converter has not got. Older torch pickled ``mesh`` as a plain attribute,
    which the property now hides, and the layout fields are missing. So: the property, then
    the pickled attribute, then None.
    """
    try:
        return torch.as_tensor(device_mesh.mesh)
    except Exception:
        pass
    stored = getattr(device_mesh, "__dict__", {}).get("mesh")
    return torch.as_tensor(stored) if isinstance(stored, torch.Tensor) else None


def _shard_ranks(value, n_ranks: int) -> tuple[list[int], int | None]:
    """Ranks holding the consecutive pieces of a DTensor, and the dim they split (None: whole).

    When the saved DeviceMesh cannot be read (a run saved with another torch, see
    :func:`_mesh_tensor`), a 1-D placement is taken as FSDP's: ranks 0..n_ranks−1 in order
    (``Shard``) or rank 0's copy (``Replicate``); the merged shape is checked by the caller.
    """
    placements = list(value.placements)
    dim = None
    for mesh_dim, placement in enumerate(placements):
        if placement.is_shard():
            if dim is not None:
                raise CheckpointError("tensor sharded over more than one mesh dim")
            dim = placement.dim
        elif not placement.is_replicate():
            raise CheckpointError(
                f"unsupported DTensor placement {placement} (mesh dim {mesh_dim})"
            )
    mesh = _mesh_tensor(value.device_mesh)
    if mesh is None:
        if len(placements) != 1:
            raise CheckpointError(
                f"the saved {len(placements)}-D device mesh cannot be read with torch "
                f"{torch.__version__} (saved with another torch version); convert with the "
                "torch version that trained the run"
            )
        return (list(range(n_ranks)) if dim is not None else [0]), dim
    index = tuple(slice(None) if p.is_shard() else 0 for p in placements)
    ranks = [int(r) for r in mesh[index].reshape(-1).tolist()]
    if max(ranks) >= n_ranks:
        raise CheckpointError(f"DTensor mesh names rank {max(ranks)} but only {n_ranks} shards")
    return ranks, dim


def _merge(name: str, pieces: list, files: list[Path]) -> torch.Tensor:
    """The full tensor of one state-dict entry from its per-rank values."""
    from torch.distributed.tensor import DTensor

    first = pieces[0]
    where = f"{files[0].parent}: tensor {name!r}"
    if isinstance(first, DTensor):
        try:
            ranks, dim = _shard_ranks(first, len(pieces))
        except CheckpointError as e:
            raise CheckpointError(f"{where}: {e}") from None
        locals_ = [pieces[r]._local_tensor for r in ranks]
        full = locals_[0] if dim is None else torch.cat(locals_, dim=dim)
        if tuple(full.shape) != tuple(first.shape):
            raise CheckpointError(
                f"{where}: rank pieces give shape {list(full.shape)}, expected {list(first.shape)}"
            )
        return full
    if isinstance(first, torch.Tensor):
        for rank, piece in enumerate(pieces[1:], start=1):
            if not isinstance(piece, torch.Tensor) or not torch.equal(piece, first):
                raise CheckpointError(f"{where}: plain tensor differs between rank 0 and {rank}")
        return first
    raise CheckpointError(
        f"{where}: unsupported entry of type {type(first).__name__} (expected DTensor shards)"
    )


def _checked_fp32(name: str, tensor: torch.Tensor, where: Path) -> torch.Tensor:
    if tensor.is_floating_point() and tensor.dtype != torch.float32:
        raise CheckpointError(
            f"{where}: tensor {name!r} is {tensor.dtype}; the actor must be trained with fp32 "
            "weights (actor_rollout_ref.actor.fsdp_config.model_dtype=fp32) for ΔW analyses"
        )
    t = tensor.detach().to("cpu").contiguous()
    check_finite(t, f"{where}: tensor {name!r}")
    return t


def convert_from_shards(actor_dir: str | Path, out_dir: str | Path) -> Path:
    """Merge the FSDP rank shards of one actor checkpoint into an fp32 HF dir.

    A tied output embedding (``checkpoints.tied_output_embedding``) is checked against the
    input embedding and not written. CheckpointError names the actor dir, shard or tensor.
    """
    actor_dir = Path(actor_dir)
    hf_dir = actor_dir / "huggingface"
    if not (hf_dir / "config.json").is_file():
        raise CheckpointError(f"{hf_dir}: config.json missing (verl writes it with every save)")
    config = json.loads((hf_dir / "config.json").read_text())
    files = _shard_files(actor_dir)
    states = []
    for f in files:
        try:
            states.append(torch.load(f, map_location="cpu", weights_only=False, mmap=True))
        except Exception as e:
            raise CheckpointError(f"{f}: cannot be read ({e})") from None
    names = list(states[0])
    for f, state in zip(files[1:], states[1:], strict=True):
        if set(state) != set(names):
            raise CheckpointError(f"{f}: holds other tensor names than {files[0].name}")
    clean = {_clean_name(n): n for n in names}

    def full(name: str) -> torch.Tensor:
        return _merge(clean[name], [s[clean[name]] for s in states], files)

    tied = tied_output_embedding(config, clean)
    with ModelWriter(out_dir, hf_dir, dtype=torch.float32) as writer:
        for name in clean:
            if tied is not None and name == tied[0]:
                continue  # an alias of the input embedding: HF dirs store it once
            tensor = full(name)
            if tied is not None and name == tied[1]:
                _check_tied(tied, tensor, full(tied[0]), actor_dir)
            writer.add(name, _checked_fp32(name, tensor, actor_dir))
        return writer.finish()


def _check_tied(
    tied: tuple[str, str], source: torch.Tensor, alias: torch.Tensor, where: Path
) -> None:
    """CheckpointError unless a stored tied output embedding equals the input embedding."""
    if alias.shape != source.shape or not torch.equal(alias, source):
        raise CheckpointError(
            f"{where}: config ties {tied[0]!r} to {tied[1]!r} (tie_word_embeddings) but the "
            f"saved {tied[0]!r} differs from {tied[1]!r}"
        )


def copy_model(model_dir: str | Path, out_dir: str | Path, require_fp32: bool = False) -> Path:
    """Stream an HF dir into an fp32 HF dir at out_dir (the tensors ModelReader sees: a
    tied ``lm_head.weight`` stored by the source is checked and left out, as for every step)."""
    with ModelReader(model_dir) as reader:
        if require_fp32:
            refuse_low_precision(reader)
        with ModelWriter(out_dir, model_dir, dtype=torch.float32) as writer:
            for name in reader.names():
                writer.add(name, reader.get(name))
            return writer.finish()


def convert_step(actor_dir: str | Path, out_dir: str | Path, prefer: str = "hf_model") -> Path:
    """One ``global_step_N/actor`` dir → fp32 HF dir; ``prefer``: hf_model | shards."""
    if prefer not in ("hf_model", "shards"):
        raise ValueError(f"prefer must be 'hf_model' or 'shards', not {prefer!r}")
    actor_dir = Path(actor_dir)
    if not actor_dir.is_dir():
        raise CheckpointError(f"{actor_dir}: actor checkpoint dir not found")
    hf_dir = actor_dir / "huggingface"
    has_shards = any(SHARD_RE.fullmatch(p.name) for p in actor_dir.iterdir())
    if prefer == "hf_model" and _has_weights(hf_dir):
        try:
            return copy_model(hf_dir, out_dir, require_fp32=True)
        except CheckpointError:
            if not has_shards:
                raise
    return convert_from_shards(actor_dir, out_dir)


def convert_run(
    verl_dir: str | Path,
    out_dir: str | Path,
    base_model_dir: str | Path | None = None,
    prefer: str = "hf_model",
) -> dict[int, Path]:
    """Convert every completed verl checkpoint to ``out_dir/step_N``; base → ``step_0``."""
    out_dir = Path(out_dir)
    done = {}
    if base_model_dir is not None:
        done[0] = copy_model(base_model_dir, out_dir / "step_0")
    for step, actor_dir in discover_verl_run(verl_dir).items():
        done[step] = convert_step(actor_dir, out_dir / f"step_{step}", prefer=prefer)
    return done


def _tracked_step(verl_dir: Path) -> int | None:
    """The step of the last completed save named by verl's tracker file, None without one."""
    tracker = verl_dir / TRACKER_FILE
    if not tracker.is_file():
        return None
    text = tracker.read_text().strip()
    if not text.isdigit():
        raise CheckpointError(f"{tracker}: expected a step number, found {text[:40]!r}")
    return int(text)


def unfinished_saves(verl_dir: str | Path) -> list[int]:
    """Steps of ``global_step_N`` dirs saved after the tracker's step (possibly incomplete,
    left out by ``discover_verl_run``), sorted; empty without a tracker file."""
    verl_dir = Path(verl_dir)
    latest = _tracked_step(verl_dir)
    if latest is None:
        return []
    steps = (STEP_DIR_RE.fullmatch(p.name) for p in verl_dir.iterdir() if p.is_dir())
    return sorted(int(m.group(1)) for m in steps if m and int(m.group(1)) > latest)


def _single_actor(source: Path) -> tuple[int, Path] | None:
    """(step, actor dir) when ``source`` is one ``global_step_N/actor`` (or ``global_step_N``)
    dir, None when it is a run dir. CheckpointError naming the tracker file when the save is
    newer than the run's last completed one."""
    actor = source / "actor" if STEP_DIR_RE.fullmatch(source.name) else source
    m = STEP_DIR_RE.fullmatch(actor.parent.name)
    if actor.name != "actor" or m is None:
        return None
    step, run_dir = int(m.group(1)), actor.parent.parent
    if not actor.is_dir():
        raise CheckpointError(f"{actor}: actor checkpoint dir not found")
    latest = _tracked_step(run_dir)
    if latest is not None and step > latest:
        raise CheckpointError(
            f"{run_dir / TRACKER_FILE}: names step {latest} as the last completed save, so "
            f"{actor} (step {step}) may be incomplete"
        )
    return step, actor


def convert_verl(
    source: str | Path,
    out_dir: str | Path,
    base_model_dir: str | Path | None = None,
    prefer: str = "hf_model",
) -> dict[int, Path]:
    """A verl run dir, or one ``global_step_N[/actor]`` dir, → fp32 HF dirs ``out_dir/step_N``
    (the base → ``step_0``), all or nothing.

    Everything is written into a hidden dir next to ``out_dir`` and renamed to it once every
    step is converted; any error removes it and leaves the inputs as they were. Steps past
    the run's tracker file are left out (see :func:`unfinished_saves`); naming one such step
    directly is an error. Peak memory: one tensor's rank pieces and its merged copy.

    Raises:
        CheckpointError: missing dir or rank shard, bf16/fp16 weights, an unfinished save,
            a corrupt shard; the message names the file.
        ValueError: ``out_dir`` is, contains or lies inside an input.
    """
    source = Path(source)
    if not source.is_dir():
        raise CheckpointError(f"{source}: verl checkpoint dir not found")
    single = _single_actor(source)
    steps = dict([single]) if single else discover_verl_run(source)
    inputs = [source, *([base_model_dir] if base_model_dir is not None else [])]
    done: dict[int, Path] = {}
    out_dir = Path(out_dir)
    with atomic_output_dir(out_dir, inputs) as tmp:
        if base_model_dir is not None:
            copy_model(base_model_dir, tmp / "step_0")
            done[0] = out_dir / "step_0"
        for step, actor_dir in steps.items():
            convert_step(actor_dir, tmp / f"step_{step}", prefer=prefer)
            done[step] = out_dir / f"step_{step}"
    return done
