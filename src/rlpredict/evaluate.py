"""Evaluation through lm-eval's Python API, written to one fixed-name JSON per model."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import yaml

from rlpredict.atomic import atomic_write_text
from rlpredict.checkpoints import ModelReader, not_built_reason
from rlpredict.tasks.prompts import is_chat_task

PLACEHOLDER = "__DATA_FILE__"
SAMPLED_SUFFIX = "_sampled"


def prepare_task_dir(
    task_files: list[str | Path], data_file: str | Path, out_dir: str | Path, repeats: int = 1
) -> Path:
    """Copy a local-data task (YAML + Python helpers), point it at ``data_file`` and set the
    number of sampled responses per problem (``repeats``, for avg@k)."""
    out_dir = Path(out_dir)
    data_file = Path(data_file).resolve()
    if not data_file.is_file():
        raise FileNotFoundError(f"{data_file}: evaluation data not found")
    out_dir.mkdir(parents=True, exist_ok=True)
    for src in map(Path, task_files):
        if src.suffix == ".yaml":
            text = src.read_text().replace(PLACEHOLDER, str(data_file))
            if repeats > 1:
                text += f"repeats: {repeats}\n"
            (out_dir / src.name).write_text(text)
        elif src.suffix == ".py":
            shutil.copy2(src, out_dir / src.name)
    return out_dir


def write_sampled_task(task_dir: str | Path, task_name: str, settings: dict) -> str:
    """Write the sampled variant of a chat task next to its (greedy) YAML in ``task_dir``:
    the same task, ``repeats`` (k) replies per problem at ``temperature`` (top-p
    ``top_p``, no top-k, as GRPO samples); returns its task name (``{task}_sampled``)."""
    name = task_name + SAMPLED_SUFFIX
    config = {
        "include": f"{task_name}.yaml",
        "task": name,
        "repeats": int(settings.get("repeats", 1)),
        "generation_kwargs": {
            "until": [],
            "do_sample": True,
            "temperature": float(settings["temperature"]),
            "top_p": float(settings.get("top_p", 1.0)),
            "top_k": 0,
            "max_gen_toks": int(settings["max_gen_toks"]),
        },
    }
    (Path(task_dir) / f"{name}.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return name


def chat_metrics(results: dict, task_name: str, settings: dict) -> dict:
    """Greedy and (when sampled) avg@k of a chat task's lm-eval results, and which of them
    is the run's ``accuracy`` (``settings["accuracy"]``: sampled, the papers' avg@k, or
    greedy; greedy when the evaluation is not sampled)."""

    def metric(name: str) -> dict:
        return {
            "accuracy": float(results["results"][name]["exact_match,none"]),
            "accuracy_stderr": float(results["results"][name]["exact_match_stderr,none"]),
            "n": int(results["n-samples"][name]["effective"]),
        }

    out = {"greedy": metric(task_name)}
    headline = "greedy"
    if settings.get("temperature", 0) > 0:
        k = int(settings.get("repeats", 1))
        out["sampled"] = {
            **metric(task_name + SAMPLED_SUFFIX),
            "k": k,
            "temperature": float(settings["temperature"]),
        }
        headline = settings.get("accuracy", "sampled")
    out["metric"] = "greedy" if headline == "greedy" else f"avg@{k} (T={settings['temperature']:g})"
    out.update({key: out[headline][key] for key in ("accuracy", "accuracy_stderr", "n")})
    return out


def hf_model_args(model_dir: str | Path, settings: dict) -> str:
    return f"pretrained={Path(model_dir).resolve()},dtype={settings.get('dtype', 'float32')}"


def generation_overrides(settings: dict, chat: bool = False) -> dict:
    """Greedy when temperature is 0, else sampling (avg@k over ``repeats`` responses). A
    chat task's YAMLs carry their own sampling settings (greedy and sampled tasks are scored
    in one call), so only ``max_gen_toks`` is overridden."""
    overrides = {}
    if "max_gen_toks" in settings:
        overrides["max_gen_toks"] = settings["max_gen_toks"]
    if settings.get("temperature", 0) > 0 and not chat:
        overrides.update(
            do_sample=True,
            temperature=settings["temperature"],
            top_p=settings.get("top_p", 1.0),
        )
    return overrides


def evaluate_model(
    model_dir: str | Path,
    task_files: list[str | Path],
    data_file: str | Path,
    task_name: str,
    out_json: str | Path,
    settings: dict,
    model_id: str,
    seed: int = 0,
    model: str = "hf",
    model_args: str | None = None,
    log_samples: bool = False,
) -> dict:
    """Evaluate one HF model dir with lm-eval's HF backend; write ``out_json`` atomically.

    ``task_files`` are the task's YAML (with ``__DATA_FILE__`` where the data path goes) and
    the Python module its ``!function`` entries name. ``model``/``model_args`` select another
    registered lm-eval model (e.g. ``rlpredict-logit-extrap``); ``model_dir`` is then only
    recorded.

    A chat task (:func:`rlpredict.tasks.prompts.is_chat_task`) is asked in the model's chat
    template, greedy and, when ``settings["temperature"]`` > 0, also sampled
    (``settings["repeats"]`` replies a problem: avg@k) in the same lm-eval call; the JSON
    then holds both (``greedy``, ``sampled``) and ``accuracy``/``accuracy_stderr`` are the
    one ``settings["accuracy"]`` names (see :func:`chat_metrics`). With ``log_samples`` the
    returned dict (not the JSON) also holds lm-eval's per-problem ``samples``."""
    if model_args is None and (skipped := write_not_built_result(model_dir, model_id, out_json)):
        return skipped
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if model_args is None:
        ModelReader(model_dir).close()  # one clear error for a missing or truncated checkpoint
    import lm_eval
    from lm_eval.tasks import TaskManager
    from lm_eval.utils import handle_non_serializable

    chat = is_chat_task(task_name)
    with tempfile.TemporaryDirectory(prefix="rlpredict-task-") as tmp:
        repeats = 1 if chat else settings.get("repeats", 1)
        task_dir = prepare_task_dir(task_files, data_file, tmp, repeats=repeats)
        tasks = [task_name]
        if chat and settings.get("temperature", 0) > 0:
            tasks.append(write_sampled_task(task_dir, task_name, settings))
        results = lm_eval.simple_evaluate(
            model=model,
            model_args=model_args or hf_model_args(model_dir, settings),
            device=settings.get("device", "cpu"),
            tasks=tasks,
            task_manager=TaskManager(include_path=str(task_dir), include_defaults=False),
            batch_size=settings.get("batch_size", 64),
            limit=settings.get("limit"),
            apply_chat_template=chat,
            gen_kwargs=generation_overrides(settings, chat) or None,
            random_seed=seed,
            numpy_random_seed=seed,
            torch_random_seed=seed,
            fewshot_random_seed=seed,
            log_samples=log_samples,
        )
    if chat:
        metrics = chat_metrics(results, task_name, settings)
    else:
        metrics = {
            "accuracy": float(results["results"][task_name]["exact_match,none"]),
            "accuracy_stderr": float(results["results"][task_name]["exact_match_stderr,none"]),
            "n": int(results["n-samples"][task_name]["effective"]),
        }
    summary = {
        "model_id": model_id,
        "model_dir": str(model_dir),
        "task": task_name,
        **metrics,
        "settings": settings,
        "lm_eval": {k: results[k] for k in ("results", "configs", "versions", "n-samples")},
    }
    write_json(summary, out_json, default=handle_non_serializable)
    if log_samples:
        summary["samples"] = results["samples"]
    return summary


def write_not_built_result(model_dir: str | Path, model_id: str, out_json: str | Path) -> dict:
    """For a dir a method could not build its model in (:func:`not_built_reason`): write and
    return an evaluation result with no accuracy and the reason under ``skipped``; for a
    model dir return an empty dict and write nothing."""
    reason = not_built_reason(model_dir)
    if reason is None:
        return {}
    result = {
        "model_id": model_id,
        "model_dir": str(model_dir),
        "skipped": reason,
        "accuracy": None,
        "accuracy_stderr": None,
        "n": 0,
    }
    write_json(result, out_json)
    return result


def write_json(obj: dict, path: str | Path, **kwargs) -> None:
    """``json.dumps(obj, indent=1, **kwargs)`` written atomically to ``path``."""
    atomic_write_text(path, json.dumps(obj, indent=1, **kwargs))


def read_accuracy(path: str | Path) -> float:
    return float(json.loads(Path(path).read_text())["accuracy"])
