"""Lazy, tensor-at-a-time reading and atomic streaming writing of Hugging Face model dirs.

A model dir holds ``config.json`` and either ``model.safetensors`` or
``model.safetensors.index.json`` plus its shards. Tensors are read one at a time with plain
file reads (no mmap), so reading a whole model never keeps more than one tensor resident.
Writing goes to a hidden temporary dir next to the target and is renamed when complete.

Rules every reader applies, so that every analysis sees the same tensors however a dir was
written:

- Each safetensors file passes the ``safetensors`` library's own header validation (offsets
  contiguous, non-overlapping, covering the data exactly) before anything is read.
- An index must agree with its shards: every tensor a shard holds is mapped to that shard,
  and every ``*.safetensors`` file in the dir is a shard the index names. Anything else (a
  stale or hand-edited index) stops with an error naming the index and the tensor or file,
  rather than silently dropping a tensor or guessing which of two copies is current.
- Tied embeddings (``tie_word_embeddings``, also in a nested ``text_config``): the output
  embedding ``lm_head.weight`` is an alias of the input embedding, never a tensor of its own
  (the ``save_pretrained`` convention). A file that stores it anyway is read without it, after
  checking it equals the embedding; see :func:`tied_output_embedding`.
"""

from __future__ import annotations

import json
import shutil
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import torch
from safetensors import SafetensorError, safe_open

from rlpredict.atomic import (  # torch-free, re-exported here
    atomic_output_dir,
    atomic_output_file,  # noqa: F401
    check_output_path,
    commit,
    remove_path,
    temporary_path,
)
from rlpredict.errors import CheckpointError
from rlpredict.runs import discover_run  # noqa: F401 - torch-free, re-exported here

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"

# Files copied verbatim from a template dir next to the weights (config.json is rewritten).
COPIED_FILES = (
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "vocab.txt",
    "merges.txt",
    "tokenizer.model",
    "spiece.model",
)
COPIED_GLOBS = ("chat_template*",)

# Config keys that must agree between two checkpoints of the same model.
ARCH_KEYS = (
    "model_type",
    "architectures",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "vocab_size",
    "tie_word_embeddings",
)

DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}
CONFIG_DTYPE_NAMES = {
    torch.float32: "float32",
    torch.bfloat16: "bfloat16",
    torch.float16: "float16",
}

MAX_HEADER_BYTES = 100 * 2**20

# Tied embeddings: the output embedding and the input embedding names it aliases, in the
# order they are looked for (decoder LMs, multimodal LMs, GPT-2/BLOOM-style, encoder-decoder).
OUTPUT_EMBEDDING = "lm_head.weight"
INPUT_EMBEDDINGS = (
    "model.embed_tokens.weight",
    "model.language_model.embed_tokens.weight",
    "transformer.wte.weight",
    "transformer.word_embeddings.weight",
    "model.decoder.embed_tokens.weight",
)


# ---------------------------------------------------------------------------------------
# Reading


@dataclass(frozen=True)
class _Entry:
    path: Path
    dtype: torch.dtype
    shape: tuple[int, ...]
    begin: int  # absolute file offsets of the tensor's bytes
    end: int


def _read_header(path: Path) -> dict[str, _Entry]:
    """Parse and validate one safetensors header; offsets become absolute file positions."""
    if not path.is_file():
        raise CheckpointError(f"{path}: file not found")
    size = path.stat().st_size
    if size < 8:
        raise CheckpointError(f"{path}: truncated safetensors file ({size} bytes, no header)")
    with path.open("rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        if n > MAX_HEADER_BYTES or 8 + n > size:
            raise CheckpointError(
                f"{path}: truncated or corrupt safetensors file "
                f"(header claims {n} bytes, file has {size - 8} after the length field)"
            )
        raw = f.read(n)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: corrupt safetensors header ({e})") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: corrupt safetensors header (not a JSON object)")
    header.pop("__metadata__", None)
    start = 8 + n
    entries: dict[str, _Entry] = {}
    max_end = 0
    for name, info in header.items():
        try:
            dtype = DTYPES[info["dtype"]]
            shape = tuple(int(d) for d in info["shape"])
            begin, end = (int(x) for x in info["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise CheckpointError(f"{path}: corrupt header entry for tensor {name!r}") from None
        numel = 1
        for d in shape:
            numel *= d
        if end - begin != numel * dtype.itemsize or begin < 0:
            raise CheckpointError(
                f"{path}: tensor {name!r} has data_offsets {begin}..{end} that do not fit "
                f"shape {list(shape)} of {info['dtype']}"
            )
        max_end = max(max_end, end)
        entries[name] = _Entry(path, dtype, shape, start + begin, start + end)
    if start + max_end > size:
        raise CheckpointError(
            f"{path}: truncated safetensors file (header needs {start + max_end} bytes, "
            f"file has {size})"
        )
    _validate_layout(path)
    return entries


def _validate_layout(path: Path) -> None:
    """The safetensors library's own header validation: tensors contiguous from offset 0,
    non-overlapping, and covering the data exactly. It maps the file but reads no tensor."""
    try:
        with safe_open(path, framework="pt"):
            pass
    except SafetensorError as e:
        raise CheckpointError(f"{path}: invalid safetensors file ({e})") from None


def _read_config(model_dir: Path) -> dict:
    config_path = model_dir / "config.json"
    if not config_path.is_file():
        raise CheckpointError(f"{model_dir}: not a model dir (config.json missing)")
    try:
        config = json.loads(config_path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{config_path}: invalid JSON ({e})") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{config_path}: expected a JSON object")
    return config


def _weight_map(index_path: Path) -> dict[str, str]:
    try:
        weight_map = json.loads(index_path.read_text())["weight_map"]
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as e:
        raise CheckpointError(f"{index_path}: invalid index ({e!r})") from None
    if not isinstance(weight_map, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in weight_map.items()
    ):
        raise CheckpointError(f"{index_path}: invalid index (weight_map must map names to files)")
    return weight_map


def _index_entries(model_dir: Path) -> dict[str, _Entry]:
    """Entries of a sharded dir, after checking that the index and the shards agree.

    Every shard's header is read. A tensor mapped to a shard that does not hold it, a tensor
    a shard holds but the index does not map there (stale index), a tensor held by two
    shards, a missing shard, and a ``*.safetensors`` file in the dir the index does not name
    each raise CheckpointError naming the index and the tensor or file: reading only what
    the index lists would silently drop tensors, and guessing would hide a stale dir.
    """
    index_path = model_dir / INDEX_FILE
    weight_map = _weight_map(index_path)
    shards = sorted(set(weight_map.values()))
    for shard in shards:
        if Path(shard).name != shard or not (model_dir / shard).is_file():
            raise CheckpointError(f"{index_path}: names shard {shard} which does not exist")
    unnamed = sorted(p.name for p in model_dir.glob("*.safetensors") if p.name not in shards)
    if unnamed:
        raise CheckpointError(
            f"{index_path}: {model_dir / unnamed[0]} is not a shard the index names; remove "
            "the stale file or index, or add its tensors to weight_map"
        )
    held: dict[str, _Entry] = {}
    for shard in shards:
        for name, entry in _read_header(model_dir / shard).items():
            if name in held:
                raise CheckpointError(
                    f"{index_path}: tensor {name!r} is stored twice, in {held[name].path.name} "
                    f"and {shard}"
                )
            held[name] = entry
    for name, shard in weight_map.items():
        if name not in held:
            raise CheckpointError(
                f"{index_path}: tensor {name!r} is mapped to {model_dir / shard}, where it "
                "is missing"
            )
        if held[name].path.name != shard:
            raise CheckpointError(
                f"{index_path}: tensor {name!r} is mapped to {shard} but stored in "
                f"{held[name].path.name}"
            )
    for name, entry in held.items():
        if name not in weight_map:
            raise CheckpointError(
                f"{index_path}: tensor {name!r} stored in {entry.path.name} is missing from "
                "weight_map (stale index); add it to weight_map or re-save the model"
            )
    return held


def tie_word_embeddings(config: dict) -> bool:
    """Whether a model config ties the output embedding to the input embedding.

    ``text_config.tie_word_embeddings`` (multimodal configs) wins over the top-level key;
    absent everywhere means untied.
    """
    text = config.get("text_config")
    if isinstance(text, dict) and "tie_word_embeddings" in text:
        return bool(text["tie_word_embeddings"])
    return bool(config.get("tie_word_embeddings", False))


def tied_output_embedding(config: dict, names: Iterable[str]) -> tuple[str, str] | None:
    """The one rule for tied weights: ``(alias, source)`` when ``alias`` is not a tensor.

    When the config ties the embeddings (:func:`tie_word_embeddings`) and ``names`` holds
    both ``lm_head.weight`` and an input embedding (first of INPUT_EMBEDDINGS present), the
    output embedding is an alias of that input embedding: readers leave it out of a model's
    tensors and converters do not write it, as ``save_pretrained`` does for tied models.
    Whoever drops the alias must check it equals the source. Returns None otherwise (untied,
    or a tied file that stores only one of the two, which is then kept as it is).
    """
    names = set(names)
    if not tie_word_embeddings(config) or OUTPUT_EMBEDDING not in names:
        return None
    source = next((n for n in INPUT_EMBEDDINGS if n in names), None)
    return None if source is None else (OUTPUT_EMBEDDING, source)


def _same_bytes(a: _Entry, b: _Entry, chunk: int = 16 * 2**20) -> bool:
    """Whether two stored tensors are identical (dtype, shape, bytes), read in chunks."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    with a.path.open("rb") as fa, b.path.open("rb") as fb:
        fa.seek(a.begin)
        fb.seek(b.begin)
        left = a.end - a.begin
        while left:
            n = min(chunk, left)
            if fa.read(n) != fb.read(n):
                return False
            left -= n
    return True


def _drop_tied_alias(config: dict, entries: dict[str, _Entry]) -> None:
    """Remove a stored tied ``lm_head.weight`` after checking it equals the embedding."""
    tied = tied_output_embedding(config, entries)
    if tied is None:
        return
    alias, source = tied
    a, s = entries[alias], entries[source]
    if not _same_bytes(a, s):
        where = a.path if a.path == s.path else f"{a.path} and {s.path}"
        raise CheckpointError(
            f"{where}: config.json ties {alias!r} to {source!r} (tie_word_embeddings) but the "
            f"stored {alias!r} ({DTYPE_NAMES[a.dtype]} {list(a.shape)}) differs from "
            f"{source!r} ({DTYPE_NAMES[s.dtype]} {list(s.shape)}); set tie_word_embeddings "
            "to false if the model really has a separate output embedding"
        )
    del entries[alias]


class ModelReader:
    """Lazy reader of an HF model dir: validates everything up front, reads one tensor per get().

    names() are the model's tensors under the module's rules: a tied ``lm_head.weight`` is
    never among them. CheckpointError (naming the file, index or tensor) on any bad input.
    """

    def __init__(self, model_dir: str | Path):
        self.model_dir = Path(model_dir)
        if not self.model_dir.is_dir():
            raise CheckpointError(f"{self.model_dir}: model dir not found")
        self.config = _read_config(self.model_dir)
        # With an index, a model.safetensors beside it is an unnamed file: refused there.
        if (self.model_dir / INDEX_FILE).exists():
            entries = _index_entries(self.model_dir)
        elif (self.model_dir / SINGLE_FILE).exists():
            entries = _read_header(self.model_dir / SINGLE_FILE)
        else:
            other = sorted(p.name for p in self.model_dir.glob("*.bin"))
            hint = f" (found {', '.join(other)}: convert to safetensors)" if other else ""
            raise CheckpointError(
                f"{self.model_dir}: no weights file ({SINGLE_FILE} or {INDEX_FILE}){hint}"
            )
        if not entries:
            raise CheckpointError(f"{self.model_dir}: weights file holds no tensors")
        _drop_tied_alias(self.config, entries)
        # File order keeps reads sequential.
        self._entries = dict(sorted(entries.items(), key=lambda kv: (kv[1].path, kv[1].begin)))
        self._files: dict[Path, IO[bytes]] = {}

    def names(self) -> list[str]:
        return list(self._entries)

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def _entry(self, name: str) -> _Entry:
        try:
            return self._entries[name]
        except KeyError:
            raise CheckpointError(f"{self.model_dir}: tensor {name!r} is missing") from None

    def shape(self, name: str) -> tuple[int, ...]:
        return self._entry(name).shape

    def dtype(self, name: str) -> torch.dtype:
        """The dtype the tensor is stored in."""
        return self._entry(name).dtype

    def file_of(self, name: str) -> Path:
        return self._entry(name).path

    def get(self, name: str) -> torch.Tensor:
        """A fresh fp32 copy of one tensor; CheckpointError if it is missing or not finite."""
        e = self._entry(name)
        f = self._files.get(e.path)
        if f is None:
            f = self._files[e.path] = e.path.open("rb")
        buf = torch.empty(e.end - e.begin, dtype=torch.uint8)
        view = memoryview(buf.numpy())
        f.seek(e.begin)
        got = 0
        while got < len(view):
            n = f.readinto(view[got:])
            if not n:
                raise CheckpointError(f"{e.path}: truncated while reading tensor {name!r}")
            got += n
        t = buf.view(e.dtype).reshape(e.shape)
        if e.dtype != torch.float32:
            t = t.to(torch.float32)
        check_finite(t, f"{e.path}: tensor {name!r}")
        return t

    def close(self) -> None:
        for f in self._files.values():
            f.close()
        self._files.clear()

    def __enter__(self) -> ModelReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"ModelReader({str(self.model_dir)!r}, {len(self._entries)} tensors)"


def count_non_finite(tensor: torch.Tensor) -> int:
    """Number of inf/NaN entries of a floating tensor, on its device; 0 for other dtypes.

    The sum is finite unless an entry is not (or the sum overflows): that screen needs no
    full-size temporary of ``torch.isfinite``, and the exact count then runs in chunks of
    2**20 entries.
    """
    if not tensor.is_floating_point() or bool(torch.isfinite(tensor.sum())):
        return 0
    return sum(int((~torch.isfinite(c)).sum()) for c in tensor.reshape(-1).split(1 << 20))


def check_finite(
    tensor: torch.Tensor, where: str, error: type[Exception] = CheckpointError
) -> None:
    """The one finiteness check of tensors read, computed or written.

    ``where`` names the file or output and the tensor, e.g. ``"dir/model.safetensors:
    tensor 'lm_head.weight'"``; the message is ``"{where} has {n} non-finite values"``.

    Raises:
        CheckpointError (or ``error``, e.g. ValueError for a computed tensor): the tensor
            holds ``n`` > 0 inf or NaN entries.
    """
    bad = count_non_finite(tensor)
    if bad:
        raise error(f"{where} has {bad} non-finite values")


def check_compatible(base: ModelReader, other: ModelReader) -> None:
    """Raise CheckpointError unless both dirs hold the same architecture, names and shapes."""
    pair = f"{base.model_dir} vs {other.model_dir}"
    for key in ARCH_KEYS:
        a, b = base.config.get(key), other.config.get(key)
        if a is not None and b is not None and a != b:
            raise CheckpointError(f"{pair}: different architecture: config {key} is {a} vs {b}")
    base_names, other_names = set(base.names()), set(other.names())
    for name in base.names():
        if name not in other_names:
            raise CheckpointError(f"{pair}: tensor {name!r} is missing from {other.model_dir}")
    for name in other.names():
        if name not in base_names:
            raise CheckpointError(f"{pair}: tensor {name!r} is missing from {base.model_dir}")
    for name in base.names():
        if base.shape(name) != other.shape(name):
            raise CheckpointError(
                f"{pair}: tensor {name!r} has shape {list(base.shape(name))} vs "
                f"{list(other.shape(name))}"
            )


# ---------------------------------------------------------------------------------------
# Writing


NOT_BUILT = "not_built.json"


def write_not_built(out_dir: str | Path, reason: str, inputs: Iterable[str | Path] = ()) -> None:
    """Write ``out_dir`` holding only the reason a method could not build its model (e.g.
    AlphaRL with equal window accuracies). Evaluations record the reason instead of an
    accuracy, so one method that cannot run does not stop a workflow."""
    with atomic_output_dir(out_dir, inputs) as tmp:
        (tmp / NOT_BUILT).write_text(json.dumps({"reason": reason}, indent=1))


def not_built_reason(model_dir: str | Path) -> str | None:
    """The reason :func:`write_not_built` recorded in ``model_dir``; None for a model dir."""
    path = Path(model_dir) / NOT_BUILT
    if not path.is_file():
        return None
    return str(json.loads(path.read_text())["reason"])


def _set_dtype(config: dict, name: str) -> None:
    keys = [k for k in ("dtype", "torch_dtype") if k in config]
    for k in keys or ["dtype"]:
        config[k] = name
    for value in config.values():
        if isinstance(value, dict) and ("dtype" in value or "torch_dtype" in value):
            _set_dtype(value, name)


class ModelWriter:
    """Streaming writer of an HF model dir.

    Tensors are appended to the open shard's data file as they arrive (nothing is buffered in
    memory); when a shard is full its header is written and the data copied behind it in
    chunks. Everything happens in a hidden tmp dir renamed to out_dir by finish(); leaving
    the ``with`` block without finish(), or with an exception, removes it.

    ``inputs`` are the dirs the tensors are computed from; out_dir may not be, contain or lie
    inside any of them or the template dir (ValueError before anything is written).
    """

    def __init__(
        self,
        out_dir: str | Path,
        template_dir: str | Path,
        dtype: torch.dtype = torch.float32,
        max_shard_bytes: int = 2**30,
        inputs: Iterable[str | Path] = (),
    ):
        if dtype not in CONFIG_DTYPE_NAMES:
            raise ValueError(f"unsupported output dtype {dtype}; use float32, bfloat16, float16")
        self.out_dir = Path(out_dir)
        self.template_dir = Path(template_dir)
        check_output_path(self.out_dir, [self.template_dir, *inputs], "output dir")
        self.dtype = dtype
        self.max_shard_bytes = max_shard_bytes
        config = _read_config(self.template_dir)
        _set_dtype(config, CONFIG_DTYPE_NAMES[dtype])
        self.out_dir.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = temporary_path(self.out_dir)
        remove_path(self.tmp)
        self.tmp.mkdir()
        self._done = False
        try:
            (self.tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
            self._copy_template_files()
        except BaseException:
            self.abort()
            raise
        self._shards: list[tuple[Path, list[str]]] = []  # (finished shard file, names)
        self._header: dict[str, dict] = {}
        self._data: IO[bytes] | None = None
        self._data_bytes = 0
        self._names: set[str] = set()
        self.total_bytes = 0

    def _copy_template_files(self) -> None:
        files = [self.template_dir / n for n in COPIED_FILES]
        for pattern in COPIED_GLOBS:
            files += sorted(self.template_dir.glob(pattern))
        for src in files:
            if src.is_file():
                shutil.copyfile(src, self.tmp / src.name)

    def add(self, name: str, tensor: torch.Tensor) -> None:
        """Append one tensor (cast to the writer's dtype) to the current shard.

        Raises:
            ValueError: the tensor as written (after the cast) has non-finite entries, e.g.
                values beyond the range of float16; everything written so far is removed.
        """
        if self._done:
            raise ValueError("ModelWriter: add() after finish()")
        if name in self._names:
            raise ValueError(f"ModelWriter: tensor {name!r} added twice")
        t = tensor.detach().to("cpu", self.dtype).contiguous()
        self._check_finite(name, tensor, t)
        nbytes = t.numel() * t.element_size()
        if self._data is not None and self._data_bytes + nbytes > self.max_shard_bytes:
            self._close_shard()
        if self._data is None:
            self._data = (self.tmp / f".shard-{len(self._shards)}.data").open("wb")
            self._data_bytes = 0
        if nbytes:
            self._data.write(memoryview(t.reshape(-1).view(torch.uint8).numpy()))
        self._header[name] = {
            "dtype": DTYPE_NAMES[self.dtype],
            "shape": list(t.shape),
            "data_offsets": [self._data_bytes, self._data_bytes + nbytes],
        }
        self._data_bytes += nbytes
        self.total_bytes += nbytes
        self._names.add(name)

    def _check_finite(self, name: str, given: torch.Tensor, cast: torch.Tensor) -> None:
        """ValueError naming out_dir, the tensor and the cause unless ``cast`` is all finite."""
        bad = count_non_finite(cast)
        if not bad:
            return
        dtype = CONFIG_DTYPE_NAMES[self.dtype]
        if count_non_finite(given):
            cause = "non-finite values"
        else:
            limit = torch.finfo(self.dtype).max
            cause = f"values beyond the {dtype} range ±{limit:.6g} overflow to inf"
        self.abort()
        raise ValueError(
            f"{self.out_dir}: tensor {name!r} would be written with {bad} of {cast.numel()} "
            f"entries non-finite in {dtype} ({cause}); nothing was written"
        )

    def _close_shard(self) -> None:
        assert self._data is not None
        data_path = Path(self._data.name)
        self._data.close()
        self._data = None
        header = {"__metadata__": {"format": "pt"}, **self._header}
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)  # keep tensor data 8-byte aligned
        shard = self.tmp / f".shard-{len(self._shards)}.safetensors"
        with shard.open("wb") as out, data_path.open("rb") as data:
            out.write(struct.pack("<Q", len(raw)))
            out.write(raw)
            shutil.copyfileobj(data, out, 16 * 2**20)
        data_path.unlink()
        self._shards.append((shard, list(self._header)))
        self._header = {}

    def finish(self) -> Path:
        """Write the last shard (and the index when sharded), then rename tmp → out_dir."""
        if self._done:
            raise ValueError("ModelWriter: finish() called twice")
        try:
            if self._data is None:
                raise ValueError(f"ModelWriter: no tensors were added for {self.out_dir}")
            self._close_shard()
            if len(self._shards) == 1:
                self._shards[0][0].rename(self.tmp / SINGLE_FILE)
            else:
                self._write_index()
            commit(self.tmp, self.out_dir)
        except BaseException:
            self.abort()
            raise
        self._done = True
        return self.out_dir

    def _write_index(self) -> None:
        n = len(self._shards)
        weight_map = {}
        for i, (path, names) in enumerate(self._shards):
            final = f"model-{i + 1:05d}-of-{n:05d}.safetensors"
            path.rename(self.tmp / final)
            weight_map.update(dict.fromkeys(names, final))
        index = {"metadata": {"total_size": self.total_bytes}, "weight_map": weight_map}
        (self.tmp / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")

    def abort(self) -> None:
        """Drop everything written so far."""
        if self._done:
            return
        data = getattr(self, "_data", None)
        if data is not None:
            data.close()
            self._data = None
        remove_path(self.tmp)
        self._done = True

    def __enter__(self) -> ModelWriter:
        return self

    def __exit__(self, *exc) -> None:
        # Without finish() the dir is incomplete: never leave it behind.
        self.abort()


# ---------------------------------------------------------------------------------------
# Precision of the inputs of ΔW = W_t − W_0

LOW_PRECISION_DTYPES = (torch.bfloat16, torch.float16, torch.float8_e4m3fn, torch.float8_e5m2)


def low_precision_tensors(reader: ModelReader) -> list[str]:
    """Names of the tensors stored in a float dtype narrower than fp32 (bf16, fp16, fp8)."""
    return [n for n in reader.names() if reader.dtype(n) in LOW_PRECISION_DTYPES]


def low_precision_problem(reader: ModelReader) -> str | None:
    """Why the dir's weights are unfit for ΔW (names the dir, dtype and a tensor), or None."""
    low = low_precision_tensors(reader)
    if not low:
        return None
    dtype = str(reader.dtype(low[0])).removeprefix("torch.")
    return (
        f"{reader.model_dir}: weights stored in {dtype} (e.g. tensor {low[0]!r}; {len(low)} "
        f"of {len(reader.names())} tensors); fp32 is needed for ΔW analyses, since {dtype} "
        "rounds away RL-sized updates"
    )


def require_fp32(reader: ModelReader, hint: str = "") -> None:
    """CheckpointError (message from low_precision_problem, then ``hint``) on low-precision
    weights: ΔW = W_t − W_0 of an RL update (~1e-6 relative) is below bf16 resolution."""
    problem = low_precision_problem(reader)
    if problem is not None:
        raise CheckpointError(problem + hint)
