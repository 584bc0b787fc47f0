"""Training and validation data in verl's parquet format.

Each row holds ``data_source`` (selects the scorer), ``prompt`` (a chat message list),
``ability``, ``reward_model: {style: rule, ground_truth}`` and ``extra_info``. Three prompt
formats are offered:

- ``arithmetic``: the generated task's prompt as is (``123+456=``), scored by
  :func:`rlpredict.tasks.arithmetic.verify`;
- ``gsm8k``: the question plus an instruction to end with ``#### N`` (verl's built-in GSM8K
  scorer accepts only that form);
- ``math``: the problem plus an instruction to put the final answer in ``\\boxed{}``.

Problems come from local jsonl / json / parquet files (fields ``problem``, ``question`` or
``prompt`` and ``answer``, or a ``solution`` whose last ``\\boxed{}`` is the answer), or on
machines with hub access from ``hub:<dataset>[@split]``.
Rows that are already in verl's format (``prompt`` is a message list and ``reward_model``
is present) pass through unchanged, e.g. DAPO-Math-17k.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd

from rlpredict.atomic import atomic_output_file
from rlpredict.tasks.math import (
    BOXED_INSTRUCTION,
    GSM8K_INSTRUCTION,
    last_boxed,
    reference_answer,
)

ARITHMETIC_SOURCE = "rlpredict/arithmetic"

# data_source names: verl picks its built-in scorer by these (GSM8K: strict "#### N";
# MATH-500 names: boxed answer; "aime*": the DAPO scorer); rlpredict's own reward accepts all.
DATA_SOURCES = {
    "arithmetic": ARITHMETIC_SOURCE,
    "gsm8k": "openai/gsm8k",
    "math": "HuggingFaceH4/MATH-500",
    "aime24": "aime24",
    "aime25": "aime25",
    "minerva": "minerva_math",
}
PROMPT_FORMATS = ("arithmetic", "gsm8k", "math")
_QUESTION_KEYS = ("problem", "question", "prompt")


def load_records(source: str | Path) -> list[dict]:
    """Rows of a jsonl / json / parquet file, or of ``hub:<dataset>[@split]`` (needs network)."""
    text = str(source)
    if text.startswith("hub:"):
        from datasets import load_dataset  # only on machines with hub access

        name, _, split = text[len("hub:") :].partition("@")
        return [dict(row) for row in load_dataset(name, split=split or "train")]
    path = Path(source)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: data file not found")
    if path.suffix == ".parquet":
        return pd.read_parquet(path).to_dict("records")
    if path.suffix == ".json":
        rows = json.loads(path.read_text())
        if not isinstance(rows, list):
            raise ValueError(f"{path}: expected a JSON list of objects")
        return rows
    rows = []
    with path.open() as f:
        for line_no, line in enumerate(f, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as err:
                    raise ValueError(f"{path}:{line_no}: not valid JSON ({err.msg})") from err
    return rows


def is_verl_row(row: dict) -> bool:
    prompt = row.get("prompt")
    return "reward_model" in row and not isinstance(prompt, str) and prompt is not None


def question_of(row: dict, where: str = "row") -> str:
    for key in _QUESTION_KEYS:
        if isinstance(row.get(key), str):
            return row[key]
    raise ValueError(f"{where}: no question field (one of {', '.join(_QUESTION_KEYS)})")


def ground_truth(answer: object, prompt_format: str) -> str:
    """The answer as verl's scorers expect it (GSM8K: a bare number without commas)."""
    text = reference_answer(str(answer))
    if prompt_format == "gsm8k" and re.fullmatch(r"-?[\d,]+(\.\d+)?", text):
        text = text.replace(",", "")
    return text


def user_message(question: str, prompt_format: str) -> str:
    if prompt_format == "arithmetic":
        return question
    if prompt_format == "gsm8k":
        return f"{question} {GSM8K_INSTRUCTION}"
    if prompt_format == "math":
        return f"{question}\n{BOXED_INSTRUCTION}"
    raise ValueError(f"unknown prompt format {prompt_format!r}; use one of {PROMPT_FORMATS}")


def verl_rows(
    records: list[dict],
    prompt_format: str,
    split: str,
    data_source: str | None = None,
    where: str = "data",
) -> list[dict]:
    """Convert problem records to verl rows (verl-format records pass through)."""
    if prompt_format not in PROMPT_FORMATS:
        raise ValueError(f"unknown prompt format {prompt_format!r}; use one of {PROMPT_FORMATS}")
    source = data_source or DATA_SOURCES[prompt_format]
    ability = "arithmetic" if prompt_format == "arithmetic" else "math"
    rows = []
    for index, record in enumerate(records):
        if is_verl_row(record):
            rows.append(record)
            continue
        answer = record.get("answer")
        if answer is None and isinstance(record.get("solution"), str):
            answer = last_boxed(record["solution"])  # MATH-style rows: the boxed result
        if answer is None:
            raise ValueError(f"{where}: row {index} has no 'answer' (nor a boxed 'solution')")
        question = question_of(record, f"{where}: row {index}")
        answer = ground_truth(answer, prompt_format)
        rows.append(
            {
                "data_source": source,
                "prompt": [{"role": "user", "content": user_message(question, prompt_format)}],
                "ability": ability,
                "reward_model": {"style": "rule", "ground_truth": answer},
                "extra_info": {"split": split, "index": index, "question": question},
            }
        )
    return rows


def write_parquet(rows: list[dict], path: str | Path) -> Path:
    """Write rows to a parquet file through a temporary name."""
    if not rows:
        raise ValueError(f"{path}: no rows to write")
    with atomic_output_file(path) as tmp:
        pd.DataFrame(rows).to_parquet(tmp, index=False)
    return Path(path)


def export_verl(
    source: str | Path,
    out_path: str | Path,
    prompt_format: str = "math",
    split: str = "train",
    data_source: str | None = None,
    limit: int | None = None,
) -> int:
    """Export one data file (or hub dataset) to verl parquet; returns the number of rows."""
    records = load_records(source)
    if limit is not None:
        records = records[:limit]
    rows = verl_rows(records, prompt_format, split, data_source, where=str(source))
    write_parquet(rows, out_path)
    return len(rows)
