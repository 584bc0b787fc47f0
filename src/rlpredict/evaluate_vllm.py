"""lm-eval with the vLLM backend: model_args, sampling and task configs from the config.

``config["eval"]["vllm"]`` holds the keys of :data:`DEFAULTS`. Sampling n responses per
problem uses lm-eval's task ``repeats``: every request is sent n times and the task's
``process_results`` sees all n responses, so a task reports avg@n (``acc``) and pass@n.
vLLM draws a fresh sample for each copy because no per-request seed is set; the engine seed
in model_args makes the whole evaluation reproducible. (lm-eval's vLLM backend reads only
the first of several outputs, so vLLM's own ``n`` sampling parameter is not used.)

vLLM needs a CUDA GPU; everything here only composes arguments and runs anywhere.
"""

from __future__ import annotations

from pathlib import Path

from rlpredict.atomic import atomic_write_text

REPO = Path(__file__).resolve().parents[2]
MATH_TASKS_DIR = REPO / "workflow" / "tasks" / "math"

DEFAULTS: dict[str, object] = {
    "dtype": "bfloat16",  # compute dtype; set explicitly, fp32 checkpoints would run in fp32
    "tensor_parallel_size": 1,  # GPUs per model replica
    "data_parallel_size": 1,  # model replicas (lm-eval dispatches them through Ray)
    "gpu_memory_utilization": 0.85,  # share of GPU memory vLLM may take
    "max_model_len": 4096,  # context length (prompt + generation) in tokens
    "max_gen_toks": 3072,  # generated tokens per response
    "n": 1,  # responses per problem: avg@n and pass@n
    "temperature": 0.0,  # 0 = greedy (needs n = 1)
    "top_p": 1.0,  # nucleus sampling
    "seed": 0,  # vLLM engine seed
    "apply_chat_template": True,  # wrap the prompt in the model's chat template
    "system_instruction": None,  # optional system message
    "batch_size": "auto",  # lm-eval batch size
    "enforce_eager": False,  # skip CUDA graph capture (less memory, slower)
}


class EvalConfigError(ValueError):
    """An invalid ``eval.vllm`` setting; the message names the key."""


def vllm_settings(eval_config: dict) -> dict:
    """``eval.vllm`` merged over :data:`DEFAULTS`, checked."""
    given = dict(eval_config.get("vllm") or {})
    unknown = sorted(set(given) - set(DEFAULTS))
    if unknown:
        raise EvalConfigError(f"eval.vllm: unknown key(s) {', '.join(unknown)}")
    s = {**DEFAULTS, **given}
    if s["dtype"] not in ("bfloat16", "float16", "float32"):
        raise EvalConfigError("eval.vllm.dtype: use bfloat16, float16 or float32")
    for key in ("tensor_parallel_size", "data_parallel_size", "n", "max_gen_toks"):
        if not isinstance(s[key], int) or s[key] < 1:
            raise EvalConfigError(f"eval.vllm.{key}: must be a positive integer")
    if not 0 < float(s["gpu_memory_utilization"]) <= 1:
        raise EvalConfigError("eval.vllm.gpu_memory_utilization: must be in (0, 1]")
    if float(s["temperature"]) < 0 or not 0 < float(s["top_p"]) <= 1:
        raise EvalConfigError("eval.vllm.temperature must be >= 0 and top_p in (0, 1]")
    if float(s["temperature"]) == 0 and s["n"] > 1:
        raise EvalConfigError(
            "eval.vllm.n: greedy decoding (temperature 0) gives n identical responses; "
            "set a temperature > 0 to sample"
        )
    if s["max_model_len"] is not None and s["max_gen_toks"] >= int(s["max_model_len"]):
        raise EvalConfigError("eval.vllm.max_gen_toks: must be below max_model_len")
    return s


def model_args(model_dir: str | Path, settings: dict) -> dict[str, object]:
    """Keyword arguments of lm-eval's ``vllm`` model (pass as ``model_args``)."""
    args: dict[str, object] = {
        "pretrained": str(Path(model_dir).resolve()),
        "dtype": settings["dtype"],
        "tensor_parallel_size": int(settings["tensor_parallel_size"]),
        "data_parallel_size": int(settings["data_parallel_size"]),
        "gpu_memory_utilization": float(settings["gpu_memory_utilization"]),
        "seed": int(settings["seed"]),
        "max_gen_toks": int(settings["max_gen_toks"]),
    }
    if settings["max_model_len"] is not None:
        args["max_model_len"] = int(settings["max_model_len"])
    if settings["enforce_eager"]:
        args["enforce_eager"] = True
    return args


def model_args_string(args: dict[str, object]) -> str:
    """The ``key=value,...`` form lm-eval's command line takes."""
    for key, value in args.items():
        if "," in str(value) or "=" in str(value):
            raise EvalConfigError(f"model_args {key}={value!r}: commas and '=' cannot be passed")
    return ",".join(f"{k}={v}" for k, v in args.items())


def gen_kwargs(settings: dict) -> dict[str, object]:
    """Generation kwargs of every request (sampled when temperature > 0, else greedy)."""
    temperature = float(settings["temperature"])
    kwargs: dict[str, object] = {
        "until": [],
        "do_sample": temperature > 0,
        "temperature": temperature,
        "max_gen_toks": int(settings["max_gen_toks"]),
    }
    if temperature > 0:
        kwargs["top_p"] = float(settings["top_p"])
    return kwargs


def task_configs(
    tasks: list[str], settings: dict, tasks_dir: str | Path = MATH_TASKS_DIR
) -> list[dict]:
    """Inline lm-eval configs of the local math tasks with repeats and sampling applied.

    Each task's YAML is read from tasks_dir; its data files become absolute paths (relative
    ones are taken from the repository root), so evaluation works from any directory.
    """
    from lm_eval.tasks._yaml_loader import load_yaml

    tasks_dir = Path(tasks_dir)
    configs = []
    for name in tasks:
        path = tasks_dir / f"{name}.yaml"
        if not path.is_file():
            known = sorted(p.stem for p in tasks_dir.glob("*.yaml"))
            raise EvalConfigError(f"eval.tasks: no task {name!r} in {tasks_dir} ({known})")
        cfg = load_yaml(path, resolve_func=True)
        files = cfg.get("dataset_kwargs", {}).get("data_files", {})
        for split, file in files.items():
            file = Path(file)
            files[split] = str(file if file.is_absolute() else (REPO / file).resolve())
        cfg["repeats"] = int(settings["n"])
        cfg["generation_kwargs"] = {**cfg.get("generation_kwargs", {}), **gen_kwargs(settings)}
        configs.append(cfg)
    return configs


def simple_evaluate_kwargs(
    model_dir: str | Path,
    eval_config: dict,
    tasks_dir: str | Path = MATH_TASKS_DIR,
    dev_file: str | Path | None = None,
) -> dict[str, object]:
    """Keyword arguments for ``lm_eval.simple_evaluate`` with the vLLM backend.

    With ``dev_file`` (a dev split written by :func:`make_dev_split`) the math tasks of
    ``eval.tasks`` are replaced by one task, :data:`DEV_TASK`, on the dev problems.
    """
    from lm_eval.tasks import TaskManager

    s = vllm_settings(eval_config)
    tasks = list(eval_config.get("tasks") or [])
    if not tasks:
        raise EvalConfigError("eval.tasks: list at least one task")
    configs = task_configs(
        [t for t in tasks if dev_file is None or t == ARITHMETIC_TASK], s, tasks_dir
    )
    if dev_file is not None and any(t != ARITHMETIC_TASK for t in tasks):
        configs.append(dev_task_config(dev_file, s))
    return {
        "model": "vllm",
        "model_args": model_args(model_dir, s),
        "tasks": configs,
        "task_manager": TaskManager(include_path=str(tasks_dir), include_defaults=False),
        "batch_size": s["batch_size"],
        "apply_chat_template": bool(s["apply_chat_template"]),
        "system_instruction": s["system_instruction"],
        "random_seed": int(s["seed"]),
        "numpy_random_seed": int(s["seed"]),
        "torch_random_seed": int(s["seed"]),
        "log_samples": False,
    }


# ---------------------------------------------------------------------------------------
# One model, several tasks, one fixed-name JSON (the workflow's evaluate rule).

ARITHMETIC_TASK = "arithmetic"
# (metric, filter) giving a task's accuracy: the math tasks' avg@n, the arithmetic task's
# exact match.
ACCURACY_METRICS = (("acc", "all_samples"), ("exact_match", "none"))


def prepare_tasks_dir(
    out_dir: str | Path, arithmetic_files: list[str | Path], data_file: str | Path
) -> Path:
    """A task dir with the math tasks and the generated arithmetic task on ``data_file``.

    Both tasks name their functions ``utils.*``; the arithmetic task's module is renamed
    ``arithmetic_utils`` so that the two can sit in one dir.
    """
    import shutil

    from rlpredict.evaluate import prepare_task_dir

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for src in MATH_TASKS_DIR.iterdir():
        if src.is_file():
            shutil.copy2(src, out_dir / src.name)
    staged = prepare_task_dir(arithmetic_files, data_file, out_dir / ".arithmetic")
    for src in staged.iterdir():
        if src.suffix == ".py":
            shutil.copy2(src, out_dir / f"arithmetic_{src.name}")
        else:
            text = src.read_text().replace("!function utils.", "!function arithmetic_utils.")
            (out_dir / src.name).write_text(text)
    shutil.rmtree(staged)
    return out_dir


def _number(value: object) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):  # lm-eval writes "N/A" where it has no stderr
        return float("nan")


def task_summary(task_results: dict, n: int) -> dict[str, float]:
    """Accuracy, its standard error, pass@n when reported, and the number of problems."""
    for metric, filter_name in ACCURACY_METRICS:
        key = f"{metric},{filter_name}"
        if key in task_results:
            summary = {
                "accuracy": _number(task_results[key]),
                "accuracy_stderr": _number(task_results.get(f"{metric}_stderr,{filter_name}")),
                "n": n,
            }
            if f"pass_at_n,{filter_name}" in task_results:
                summary["pass_at_n"] = _number(task_results[f"pass_at_n,{filter_name}"])
            return summary
    raise ValueError(f"lm-eval results hold no accuracy metric: {sorted(task_results)}")


def summarize(results: dict, tasks: list[str]) -> dict[str, object]:
    """Per-task accuracies and their unweighted mean (with the mean's standard error)."""
    per_task = {
        task: task_summary(results["results"][task], int(results["n-samples"][task]["effective"]))
        for task in tasks
    }
    accuracies = [s["accuracy"] for s in per_task.values()]
    variances = [s["accuracy_stderr"] ** 2 for s in per_task.values()]
    return {
        "accuracy": sum(accuracies) / len(accuracies),
        "accuracy_stderr": sum(variances) ** 0.5 / len(variances),
        "n": sum(s["n"] for s in per_task.values()),
        "tasks": per_task,
    }


def evaluate_model(
    model_dir: str | Path,
    eval_config: dict,
    out_json: str | Path,
    model_id: str,
    arithmetic: tuple[list[str | Path], str | Path] | None = None,
    lm: object | None = None,
    dev_file: str | Path | None = None,
) -> dict:
    """Evaluate one model dir on ``eval_config["tasks"]`` with vLLM; write ``out_json``.

    ``arithmetic`` gives the generated task's files and split when "arithmetic" is one of the
    tasks. ``lm`` replaces the vLLM model with another lm-eval model instance (logits
    extrapolation). ``dev_file``: evaluate on the dev split instead of the math tasks' test
    data (:func:`simple_evaluate_kwargs`); the arithmetic task then reads its dev split.
    """
    import os
    import tempfile

    from rlpredict.checkpoints import ModelReader
    from rlpredict.evaluate import write_json, write_not_built_result

    if lm is None and (skipped := write_not_built_result(model_dir, model_id, out_json)):
        return skipped
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    ModelReader(model_dir).close()  # one clear error for a missing or truncated checkpoint
    import lm_eval
    from lm_eval.utils import handle_non_serializable

    tasks = list(eval_config.get("tasks") or [])
    if ARITHMETIC_TASK in tasks and arithmetic is None:
        raise EvalConfigError("eval.tasks: the arithmetic task needs its files and test split")
    with tempfile.TemporaryDirectory(prefix="rlpredict-tasks-") as tmp:
        tasks_dir = MATH_TASKS_DIR
        if ARITHMETIC_TASK in tasks:
            tasks_dir = prepare_tasks_dir(tmp, *arithmetic)
        kwargs = simple_evaluate_kwargs(model_dir, eval_config, tasks_dir, dev_file)
        kwargs["limit"] = eval_config.get("limit")
        if lm is not None:
            kwargs["model"] = lm
            del kwargs["model_args"]
        results = lm_eval.simple_evaluate(**kwargs)
    if dev_file is not None:
        tasks = [t for t in tasks if t == ARITHMETIC_TASK]
        tasks += [DEV_TASK] if DEV_TASK in results["results"] else []
    summary = {
        "model_id": model_id,
        "model_dir": str(model_dir),
        "backend": "vllm",
        **summarize(results, tasks),
        "settings": eval_config,
        "lm_eval": {k: results[k] for k in ("results", "configs", "versions", "n-samples")},
    }
    write_json(summary, out_json, default=handle_non_serializable)
    return summary


# ---------------------------------------------------------------------------------------
# The dev split of the math tasks (AlphaRL's accuracy labels, log-prob probes).

DEV_TASK = "rlpredict_dev"


def _normalised(text: str) -> str:
    return " ".join(str(text).lower().split())


def test_problems(files: list[str | Path]) -> list[str]:
    """Normalised problem texts of the math tasks' test files (jsonl with problem/question)."""
    from rlpredict.tasks.export import load_records, question_of

    return [
        _normalised(question_of(row, f"{file}: row {i}"))
        for file in files
        for i, row in enumerate(load_records(file))
    ]


def make_dev_split(
    source: str | Path,
    out_path: str | Path,
    *,
    prompt_format: str,
    test_files: list[str | Path],
    size: int,
    seed: int = 0,
) -> int:
    """Write a dev split of ``size`` problems drawn (seeded) from the training data ``source``.

    ``source`` is what ``data.val`` or ``data.train`` names (a local jsonl / json / parquet
    file, or ``hub:<dataset>[@split]``). Each problem becomes a row ``{"prompt": <user text>,
    "answer": <str>}`` with the prompt exactly as training shows it (``prompt_format``, see
    :mod:`rlpredict.tasks.export`; verl-format rows keep their own message). A problem whose
    text equals or contains one of the test problems of ``test_files`` is never drawn, so dev
    and test share no problem. Returns the number of rows written.

    Raises:
        ValueError: ``size`` < 1, or no problem left after removing the test problems (the
            message names the source). Nothing is written then.
    """
    import json
    import random

    from rlpredict.tasks.export import load_records, verl_rows

    if size < 1:
        raise ValueError(f"{source}: the dev split needs at least one problem, got size {size}")
    rows = verl_rows(load_records(source), prompt_format, "dev", where=str(source))
    tests = set(test_problems(test_files))
    long_tests = [t for t in tests if len(t) >= 40]  # short texts match too much by accident
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    dev, seen = [], set()
    for i in order:
        row = rows[i]
        prompt = str(row["prompt"][-1]["content"])
        question = _normalised((row.get("extra_info") or {}).get("question") or prompt)
        text = _normalised(prompt)
        if question in seen or question in tests or any(t in text for t in long_tests):
            continue
        seen.add(question)
        dev.append({"prompt": prompt, "answer": str(row["reward_model"]["ground_truth"])})
        if len(dev) == size:
            break
    if not dev:
        raise ValueError(
            f"{source}: no problem left for the dev split after removing the "
            f"{len(tests)} test problems of {', '.join(map(str, test_files))}"
        )
    atomic_write_text(out_path, "".join(json.dumps(r) + "\n" for r in dev))
    return len(dev)


def dev_task_config(dev_file: str | Path, settings: dict) -> dict:
    """Inline lm-eval config of :data:`DEV_TASK`: the math tasks' template and verifier on the
    dev split's rows, the prompt fed as written there, with ``settings``' sampling."""
    from lm_eval.tasks._yaml_loader import load_yaml

    dev_file = Path(dev_file).resolve()
    if not dev_file.is_file():
        raise FileNotFoundError(f"{dev_file}: dev split not found")
    cfg = load_yaml(MATH_TASKS_DIR / "_default_template_yaml", resolve_func=True)
    cfg["task"] = DEV_TASK
    cfg["doc_to_text"] = "{{prompt}}"
    cfg["dataset_kwargs"] = {"data_files": {"test": str(dev_file)}}
    cfg["repeats"] = int(settings["n"])
    cfg["generation_kwargs"] = {**cfg.get("generation_kwargs", {}), **gen_kwargs(settings)}
    return cfg
