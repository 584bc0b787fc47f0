"""Backend selection and its pieces that run without a GPU: config checks across keys, steps
of an existing run, verl's console history, checkpoint import, and the vLLM evaluation's
per-task summary (through lm-eval's real loop with a stand-in model; vLLM needs CUDA)."""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import pytest
import torch
import yaml
from lm_eval.api.model import LM
from snakemake.utils import validate

from rlpredict.backends import (
    check_config,
    data_format,
    existing_steps,
    fetch_base_model,
    math_task_files,
)
from rlpredict.checkpoints import CheckpointError, ModelReader
from rlpredict.evaluate_vllm import DEFAULTS as VLLM_DEFAULTS
from rlpredict.evaluate_vllm import evaluate_model
from rlpredict.model import build_model, build_tokenizer, save_model_dir
from rlpredict.train.verl_backend import DEFAULTS as VERL_DEFAULTS
from rlpredict.train.verl_backend import PRESETS
from rlpredict.train.verl_run import (
    CONSOLE_LOG,
    check_saved,
    existing_history,
    import_checkpoint,
    parse_console,
    read_history,
    run_logged,
)

REPO = Path(__file__).resolve().parents[1]
SCHEMA = REPO / "workflow" / "schemas" / "config.schema.yaml"
SIZES = {
    "hidden_size": 16,
    "intermediate_size": 32,
    "num_layers": 1,
    "num_heads": 2,
    "num_kv_heads": 1,
    "max_positions": 32,
}


def filled(config: dict) -> dict:
    """The config with the schema's defaults, as the workflow sees it."""
    config = copy.deepcopy(config)
    validate(config, str(SCHEMA))
    return config


def tiny_model(out: Path, dtype=torch.float32, seed: int = 0) -> Path:
    tokenizer = build_tokenizer()
    model = build_model(tokenizer, SIZES, seed=seed)
    save_model_dir(model, tokenizer, out)
    if dtype != torch.float32:
        model.to(dtype).save_pretrained(out, safe_serialization=True)
    return out


def fake_verl_dir(root: Path, steps: list[int], latest: int) -> Path:
    for step in steps:
        (root / f"global_step_{step}" / "actor").mkdir(parents=True)
    (root / "latest_checkpointed_iteration.txt").write_text(str(latest))
    return root


# ---------------------------------------------------------------------------------------
# Schema and library defaults agree.


def schema_properties(*path: str) -> dict:
    node = yaml.safe_load(SCHEMA.read_text())
    for key in path:
        node = node["properties"][key]
    return node["properties"]


def test_schema_train_verl_matches_the_library_defaults():
    props = schema_properties("train", "verl")
    assert set(props) == set(VERL_DEFAULTS)
    preset_keys = {k for preset in PRESETS.values() for k in preset}
    for key, spec in props.items():
        if key in preset_keys:  # a schema default would override the algorithm preset
            assert "default" not in spec, key
        else:
            assert spec["default"] == VERL_DEFAULTS[key], key


def test_schema_eval_vllm_matches_the_library_defaults():
    props = schema_properties("eval", "vllm")
    assert set(props) == set(VLLM_DEFAULTS)
    for key, spec in props.items():
        assert spec["default"] == VLLM_DEFAULTS[key], key


def test_defaults_keep_the_embedded_configs_on_cpu_backends():
    for name in ("config.yaml", "smoke.yaml"):
        config = filled(yaml.safe_load((REPO / "config" / name).read_text()))
        assert config["model"]["source"] == "scratch" and config["train"]["backend"] == "trl"
        assert config["eval"]["backend"] == "hf" and config["eval"]["tasks"] == ["arithmetic"]
        check_config(config, REPO)


def test_dapo_preset_survives_default_filling(tmp_path):
    from rlpredict.train.verl_backend import verl_settings

    config = filled({"run": "r", "train": {"backend": "verl", "verl": {"algorithm": "dapo"}}})
    settings = verl_settings(config["train"])
    assert settings["clip_ratio_high"] == 0.28 and settings["dynamic_sampling"] is True
    assert settings["weight_decay"] == 0.1


# ---------------------------------------------------------------------------------------
# Checks across keys.


WEIGHT_METHODS = ["two-point", "lstsq-free", "lstsq-anchored", "expo", "relex"]


def base_config(**sections) -> dict:
    config = {
        "run": "r",
        "control": {"sft": {"enabled": False}},
        "extrapolate": {"methods": WEIGHT_METHODS},
        "linearity": {"enabled": False},
    }
    config.update(sections)
    return filled(config)


@pytest.mark.parametrize(
    ("sections", "key"),
    [
        ({"model": {"source": "hub"}}, "model.path"),
        ({"model": {"source": "local", "path": "/no/such/dir"}}, "model.path"),
        (
            {"model": {"source": "hub", "path": "x/y"}, "control": {"sft": {"enabled": True}}},
            "control.sft.enabled",
        ),
        ({"train": {"backend": "verl", "verl": {"nnodes": 2}}}, "train.verl.nnodes"),
        (
            {"train": {"backend": "verl", "verl": {"ppo_mini_batch_size": 999}}},
            "ppo_mini_batch_size",
        ),
        ({"train": {"backend": "verl"}, "data": {"format": "gsm8k"}}, "data.format"),
        ({"train": {"backend": "verl", "verl": {}}}, "max_positions"),
        ({"eval": {"backend": "vllm", "tasks": ["arithmetic"]}}, "eval.vllm.max_model_len"),
        ({"train": {"backend": "existing"}}, "train.backend existing"),
        (
            {"model": {"source": "hub", "path": "x/y"}, "train": {"backend": "existing"}},
            "train.existing",
        ),
        ({"eval": {"tasks": ["rlpredict_gsm8k"]}}, "eval.tasks"),
        ({"eval": {"backend": "vllm", "tasks": ["gpqa"]}}, "eval.tasks: unknown task"),
        ({"eval": {"backend": "vllm", "vllm": {"n": 4}}}, "eval.vllm.n"),
    ],
)
def test_bad_combinations_name_the_key(sections, key):
    with pytest.raises(ValueError, match=key):
        check_config(base_config(**sections), REPO)


@pytest.mark.parametrize(
    ("sections", "key"),
    [
        (
            {
                "extrapolate": {
                    "methods": [*WEIGHT_METHODS, "alpharl", "logits"],
                    "alpharl": {"targets": ["forecast"]},
                }
            },
            "alpharl.targets",
        ),
        ({"extrapolate": {"methods": [*WEIGHT_METHODS, "logits"]}}, "methods.logits"),
        ({"linearity": {"enabled": True}}, "linearity.enabled"),
    ],
)
def test_dev_label_logits_and_linearity_analyses_run_on_a_pretrained_model(sections, key):
    config = base_config(model={"source": "hub", "path": "x/y"}, **sections)
    check_config(config, REPO)  # no longer refused: they run on the run's own task


def test_good_paper_scale_combinations_pass(tmp_path):
    verl = fake_verl_dir(tmp_path / "verl", [5, 10], latest=10)
    check_config(
        base_config(
            model={"source": "local", "path": str(tmp_path)},
            train={"backend": "existing", "existing": {"verl_dir": str(verl)}},
            eval={"backend": "vllm", "tasks": ["arithmetic", "rlpredict_math500"]},
        ),
        REPO,
    )
    config = base_config(
        train={"backend": "verl", "verl": {"max_prompt_length": 16, "max_response_length": 8}},
        data={"train": "x.jsonl", "val": "generated"},
        eval={
            "backend": "vllm",
            "tasks": ["arithmetic"],
            "vllm": {"max_model_len": 64, "max_gen_toks": 6},
        },
    )
    check_config(config, REPO)
    assert data_format(config["data"], "train") == "math"
    assert data_format(config["data"], "val") == "arithmetic"


def test_existing_steps_from_verl_and_hf_dirs(tmp_path):
    verl = fake_verl_dir(tmp_path / "verl", [5, 10, 15], latest=10)
    assert existing_steps({"verl_dir": str(verl)}) == [0, 5, 10]  # 15: not completed
    assert existing_steps({"verl_dir": str(verl), "steps": [10]}) == [0, 10]
    with pytest.raises(
        ValueError, match=r"train.existing.steps: no checkpoint for step\(s\) \[15\]"
    ):
        existing_steps({"verl_dir": str(verl), "steps": [5, 15]})
    hf = tmp_path / "checkpoints"
    for step in (0, 20, 40):
        (hf / f"step_{step}").mkdir(parents=True)
    assert existing_steps({"checkpoints_dir": str(hf)}) == [0, 20, 40]
    with pytest.raises(ValueError, match="exactly one"):
        existing_steps({"verl_dir": str(verl), "checkpoints_dir": str(hf)})
    with pytest.raises(ValueError, match="train.existing.verl_dir: .*not found"):
        existing_steps({"verl_dir": str(tmp_path / "missing")})
    (hf / "step_20").rmdir(), (hf / "step_40").rmdir()
    with pytest.raises(ValueError, match="no trained checkpoint"):
        existing_steps({"checkpoints_dir": str(hf)})


def test_math_task_files_are_the_tasks_and_their_data():
    files = math_task_files(["arithmetic", "rlpredict_gsm8k"], REPO)
    assert "resources/benchmarks/gsm8k.jsonl" in files
    assert "workflow/tasks/math/rlpredict_gsm8k.yaml" in files
    assert "workflow/tasks/math/_default_template_yaml" in files
    assert all((REPO / f).is_file() for f in files)
    assert math_task_files(["arithmetic"], REPO) == []


# ---------------------------------------------------------------------------------------
# verl's console history.

CONSOLE = """\
(TaskRunner pid=41) Training Progress:  10%|#         | 1/10
(TaskRunner pid=41) step:1 - actor/pg_loss:np.float64(-0.25) - critic/score/mean:0.125 - \
timing_s/gen:12 - training/epoch:0
(TaskRunner pid=41) step:2 - critic/score/mean:np.float32(0.25) - response_length/mean:nan
Traceback-like noise: step:x - not:a metric
(TaskRunner pid=77) step:2 - critic/score/mean:0.375 - response_length/mean:310.5
"""


def test_console_lines_become_a_history():
    rows = parse_console(CONSOLE.splitlines())
    assert [r["step"] for r in rows] == [1, 2]
    assert rows[0]["actor/pg_loss"] == -0.25 and rows[0]["timing_s/gen"] == 12.0
    assert rows[1] == {"step": 2, "critic/score/mean": 0.375, "response_length/mean": 310.5}


def test_run_logged_appends_across_launches_and_later_lines_win(tmp_path):
    log = tmp_path / "verl" / CONSOLE_LOG
    script = (
        "import sys; print('step:1 - critic/score/mean:' + sys.argv[1]); sys.exit(int(sys.argv[2]))"
    )
    assert run_logged([sys.executable, "-c", script, "0.1", "3"], log) == 3
    assert run_logged([sys.executable, "-c", script, "0.5", "0"], log) == 0
    text = log.read_text()
    assert text.count("# rlpredict: ") == 2
    history = read_history(log)
    assert list(history.columns[:2]) == ["step", "reward"]
    assert history["reward"].tolist() == [0.5]
    empty = read_history(tmp_path / "none.log")
    assert list(empty.columns) == ["step", "reward", "reward_metric"] and len(empty) == 0


def test_check_saved_names_missing_steps(tmp_path):
    verl = fake_verl_dir(tmp_path, [10, 20], latest=20)
    assert set(check_saved(verl, [10, 20])) == {10, 20}
    with pytest.raises(CheckpointError, match=r"step\(s\) \[30\]"):
        check_saved(verl, [10, 30])


def test_existing_history_found_next_to_a_workflow_run(tmp_path):
    (tmp_path / "analysis").mkdir()
    (tmp_path / "analysis" / "train_history.csv").write_text("step,reward\n10,0.5\n")
    history = existing_history({"checkpoints_dir": str(tmp_path / "checkpoints")})
    assert history["reward"].tolist() == [0.5]
    (tmp_path / "verl").mkdir()
    (tmp_path / "verl" / CONSOLE_LOG).write_text("step:3 - critic/score/mean:0.75\n")
    assert existing_history({"verl_dir": str(tmp_path / "verl")})["reward"].tolist() == [0.75]


# ---------------------------------------------------------------------------------------
# Checkpoint import and base models.


def test_import_checkpoint_keeps_fp32_and_refuses_bf16_rl_steps(tmp_path):
    fp32 = tiny_model(tmp_path / "fp32")
    bf16 = tiny_model(tmp_path / "bf16", dtype=torch.bfloat16, seed=1)
    import_checkpoint(fp32, tmp_path / "step_10", kind="hf")
    with ModelReader(fp32) as a, ModelReader(tmp_path / "step_10") as b:
        assert all(torch.equal(a.get(n), b.get(n)) for n in a.names())
    with pytest.raises(CheckpointError, match="fp32 is needed"):
        import_checkpoint(bf16, tmp_path / "step_20", kind="hf")
    assert not (tmp_path / "step_20").exists()
    base = fetch_base_model({"source": "local", "path": str(bf16)}, tmp_path / "base")
    with ModelReader(bf16) as a, ModelReader(base) as b:
        name = a.names()[0]
        assert b.dtype(name) == torch.float32
        assert torch.equal(a.get(name), b.get(name))  # bf16 → fp32 is exact
    assert (base / "tokenizer.json").is_file()
    with pytest.raises(ValueError, match="unknown checkpoint kind"):
        import_checkpoint(fp32, tmp_path / "x", kind="fsdp")


# ---------------------------------------------------------------------------------------
# The vLLM evaluation's JSON, through lm-eval's real loop with a stand-in model.


class StandIn(LM):
    """Right on every GSM8K problem (boxed reference answer), wrong on every sum."""

    def __init__(self, answers: dict[str, str]):
        super().__init__()
        self.answers = answers

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        out = []
        for request in requests:
            context = request.args[0]
            answer = next((a for q, a in self.answers.items() if q in context), None)
            out.append(f"So \\boxed{{{answer}}}." if answer is not None else "0")
        return out

    def loglikelihood(self, requests, disable_tqdm: bool = False):
        raise NotImplementedError

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
        raise NotImplementedError


def test_evaluate_model_writes_per_task_accuracies_and_their_mean(tmp_path):
    model = tiny_model(tmp_path / "model")
    rows = [json.loads(x) for x in (REPO / "resources/benchmarks/gsm8k.jsonl").open()][:4]
    test = tmp_path / "test.jsonl"
    test.write_text(
        "".join(
            json.dumps({"prompt": f"{a}+1=", "answer": str(a + 1)}) + "\n" for a in range(100, 104)
        )
    )
    arithmetic = (
        [
            REPO / "workflow/tasks/arithmetic/arithmetic.yaml",
            REPO / "workflow/tasks/arithmetic/utils.py",
        ],
        test,
    )
    settings = {
        "tasks": ["rlpredict_gsm8k", "arithmetic"],
        "limit": 4,
        "vllm": {"max_gen_toks": 8, "apply_chat_template": False},
    }
    out = tmp_path / "eval" / "step_0.json"
    summary = evaluate_model(
        model,
        settings,
        out,
        "step_0",
        arithmetic=arithmetic,
        lm=StandIn({r["problem"]: r["answer"] for r in rows}),
    )
    written = json.loads(out.read_text())
    assert written["accuracy"] == summary["accuracy"] == pytest.approx(0.5)
    assert written["tasks"]["rlpredict_gsm8k"]["accuracy"] == 1.0
    assert written["tasks"]["rlpredict_gsm8k"]["pass_at_n"] == 1.0
    assert written["tasks"]["arithmetic"]["accuracy"] == 0.0
    assert written["n"] == 8 and written["backend"] == "vllm"
    assert written["accuracy_stderr"] == pytest.approx(0.0)
