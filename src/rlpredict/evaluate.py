"""Evaluation through lm-eval's Python API, written to one fixed-name JSON per model."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from rlpredict.checkpoints import ModelReader

PLACEHOLDER = "__DATA_FILE__"


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


def hf_model_args(model_dir: str | Path, settings: dict) -> str:
    return f"pretrained={Path(model_dir).resolve()},dtype={settings.get('dtype', 'float32')}"


def generation_overrides(settings: dict) -> dict:
    """Greedy when temperature is 0, else sampling (avg@k over ``repeats`` responses)."""
    overrides = {}
    if "max_gen_toks" in settings:
        overrides["max_gen_toks"] = settings["max_gen_toks"]
    if settings.get("temperature", 0) > 0:
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
) -> dict:
    """Evaluate one HF model dir with lm-eval's HF backend; write ``out_json`` atomically.

    ``task_files`` are the task's YAML (with ``__DATA_FILE__`` where the data path goes) and
    the Python module its ``!function`` entries name. ``model``/``model_args`` select another
    registered lm-eval model (e.g. ``rlpredict-logit-extrap``); ``model_dir`` is then only
    recorded."""
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if model_args is None:
        ModelReader(model_dir).close()  # one clear error for a missing or truncated checkpoint
    import lm_eval
    from lm_eval.tasks import TaskManager
    from lm_eval.utils import handle_non_serializable

    with tempfile.TemporaryDirectory(prefix="rlpredict-task-") as tmp:
        task_dir = prepare_task_dir(task_files, data_file, tmp, repeats=settings.get("repeats", 1))
        results = lm_eval.simple_evaluate(
            model=model,
            model_args=model_args or hf_model_args(model_dir, settings),
            device=settings.get("device", "cpu"),
            tasks=[task_name],
            task_manager=TaskManager(include_path=str(task_dir), include_defaults=False),
            batch_size=settings.get("batch_size", 64),
            limit=settings.get("limit"),
            gen_kwargs=generation_overrides(settings) or None,
            random_seed=seed,
            numpy_random_seed=seed,
            torch_random_seed=seed,
            fewshot_random_seed=seed,
            log_samples=False,
        )
    summary = {
        "model_id": model_id,
        "model_dir": str(model_dir),
        "task": task_name,
        "accuracy": float(results["results"][task_name]["exact_match,none"]),
        "accuracy_stderr": float(results["results"][task_name]["exact_match_stderr,none"]),
        "n": int(results["n-samples"][task_name]["effective"]),
        "settings": settings,
        "lm_eval": {k: results[k] for k in ("results", "configs", "versions", "n-samples")},
    }
    write_json(summary, out_json, default=handle_non_serializable)
    return summary


def write_json(obj: dict, path: str | Path, **kwargs) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=1, **kwargs))
    tmp.replace(path)


def read_accuracy(path: str | Path) -> float:
    return float(json.loads(Path(path).read_text())["accuracy"])
