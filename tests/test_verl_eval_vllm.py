"""Composition of lm-eval's vLLM arguments, and the local math tasks run through lm-eval.

vLLM itself needs a CUDA GPU; here the composed task configs run through lm-eval's real
evaluation loop with a stand-in model that answers from the reference data.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import lm_eval
import pytest
from lm_eval.api.model import LM

from rlpredict.evaluate_vllm import (
    EvalConfigError,
    gen_kwargs,
    model_args,
    model_args_string,
    simple_evaluate_kwargs,
    task_configs,
    vllm_settings,
)

BENCHMARKS = Path(__file__).resolve().parents[1] / "resources" / "benchmarks"
TASKS = {
    "rlpredict_math500": "math",
    "rlpredict_aime24": "aime24",
    "rlpredict_aime25": "aime25",
    "rlpredict_gsm8k": "gsm8k",
    "rlpredict_minerva": "minerva",
}


def test_model_args_are_explicit_and_complete(tmp_path):
    s = vllm_settings(
        {"vllm": {"tensor_parallel_size": 2, "data_parallel_size": 4, "max_model_len": 8192}}
    )
    args = model_args(tmp_path, s)
    assert args == {
        "pretrained": str(tmp_path.resolve()),
        "dtype": "bfloat16",
        "tensor_parallel_size": 2,
        "data_parallel_size": 4,
        "gpu_memory_utilization": 0.85,
        "seed": 0,
        "max_gen_toks": 3072,
        "max_model_len": 8192,
    }
    text = model_args_string(args)
    assert text.startswith(f"pretrained={tmp_path.resolve()},dtype=bfloat16,")
    assert "tensor_parallel_size=2" in text and "data_parallel_size=4" in text
    with pytest.raises(EvalConfigError, match="commas"):
        model_args_string({"pretrained": "/a,b"})


def test_sampling_and_greedy_gen_kwargs():
    sampled = gen_kwargs(vllm_settings({"vllm": {"n": 16, "temperature": 0.6, "top_p": 0.95}}))
    assert sampled == {
        "until": [],
        "do_sample": True,
        "temperature": 0.6,
        "max_gen_toks": 3072,
        "top_p": 0.95,
    }
    greedy = gen_kwargs(vllm_settings({}))
    assert greedy["do_sample"] is False and greedy["temperature"] == 0.0 and "top_p" not in greedy


@pytest.mark.parametrize(
    "vllm, key",
    [
        ({"n": 4}, "eval.vllm.n"),
        ({"dtype": "auto"}, "eval.vllm.dtype"),
        ({"tensor_parallel_size": 0}, "eval.vllm.tensor_parallel_size"),
        ({"gpu_memory_utilization": 1.5}, "eval.vllm.gpu_memory_utilization"),
        ({"max_gen_toks": 5000, "max_model_len": 4096}, "eval.vllm.max_gen_toks"),
        ({"beams": 2}, "eval.vllm: unknown key"),
    ],
)
def test_bad_settings_name_the_key(vllm, key):
    with pytest.raises(EvalConfigError, match=key):
        vllm_settings({"vllm": vllm})


def test_task_configs_point_at_the_vendored_files_with_repeats():
    s = vllm_settings({"vllm": {"n": 8, "temperature": 1.0}})
    configs = task_configs(list(TASKS), s)
    assert [c["task"] for c in configs] == list(TASKS)
    for cfg, stem in zip(configs, TASKS.values(), strict=True):
        path = Path(cfg["dataset_kwargs"]["data_files"]["test"])
        assert path.is_absolute() and path == (BENCHMARKS / f"{stem}.jsonl").resolve()
        assert cfg["repeats"] == 8
        assert cfg["generation_kwargs"]["do_sample"] is True
    with pytest.raises(EvalConfigError, match="no task 'gpqa'"):
        task_configs(["gpqa"], s)


class ReferenceAnswers(LM):
    """Answers each problem from the reference file: right on odd calls, wrong on even ones.

    The first problem is always answered wrongly. Records the generation kwargs it gets.
    """

    def __init__(self, rows: list[dict]):
        super().__init__()
        self.answers = {(r.get("problem") or r.get("question")): str(r["answer"]) for r in rows}
        self.first = rows[0].get("problem") or rows[0].get("question")
        self.calls: Counter[str] = Counter()
        self.kwargs: list[dict] = []

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        out = []
        for request in requests:
            context, kwargs = request.args
            self.kwargs.append(kwargs)
            question = next(q for q in self.answers if q in context)
            self.calls[question] += 1
            right = question != self.first and self.calls[question] % 2 == 1
            answer = self.answers[question] if right else "-123456789"
            out.append(f"Some reasoning first.\nSo the answer is $\\boxed{{{answer}}}$.")
        return out

    def loglikelihood(self, requests, disable_tqdm: bool = False):
        raise NotImplementedError

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
        raise NotImplementedError


@pytest.mark.parametrize("task", ["rlpredict_math500", "rlpredict_gsm8k"])
def test_avg_at_n_and_pass_at_n_through_lm_eval(task, tmp_path):
    rows = [json.loads(x) for x in (BENCHMARKS / f"{TASKS[task]}.jsonl").read_text().splitlines()]
    kwargs = simple_evaluate_kwargs(
        tmp_path, {"tasks": [task], "vllm": {"n": 4, "temperature": 0.6, "top_p": 0.95}}
    )
    assert kwargs["model"] == "vllm" and kwargs["model_args"]["dtype"] == "bfloat16"
    lm = ReferenceAnswers(rows)
    kwargs.update(model=lm, limit=4, apply_chat_template=False)
    del kwargs["model_args"]
    results = lm_eval.simple_evaluate(**kwargs)["results"][task]
    # 4 problems x 4 samples; problem 1 never right, the others right on 2 of 4 samples.
    assert len(lm.kwargs) == 16
    assert all(k["do_sample"] and k["temperature"] == 0.6 and k["top_p"] == 0.95 for k in lm.kwargs)
    assert results["acc,all_samples"] == pytest.approx((0 + 0.5 * 3) / 4)
    assert results["pass_at_n,all_samples"] == pytest.approx(3 / 4)


def test_dev_split_replaces_the_math_tasks_and_scores_through_lm_eval(tmp_path):
    from rlpredict.evaluate_vllm import DEV_TASK, make_dev_split

    rows = [json.loads(x) for x in (BENCHMARKS / "gsm8k.jsonl").read_text().splitlines()[:6]]
    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in rows))
    test = tmp_path / "test.jsonl"  # the first two problems are also test problems
    test.write_text("".join(json.dumps(r) + "\n" for r in rows[:2]))
    dev = tmp_path / "dev.jsonl"
    assert make_dev_split(train, dev, prompt_format="math", test_files=[test], size=10) == 4
    settings = {
        "tasks": ["rlpredict_math500", "rlpredict_gsm8k"],
        "vllm": {"n": 2, "temperature": 1.0},
    }
    kwargs = simple_evaluate_kwargs(tmp_path, settings, dev_file=dev)
    assert [c["task"] for c in kwargs["tasks"]] == [DEV_TASK]  # no test data is read
    lm = ReferenceAnswers(rows[2:])
    kwargs.update(model=lm, apply_chat_template=False)
    del kwargs["model_args"]
    results = lm_eval.simple_evaluate(**kwargs)
    # 4 dev problems x 2 samples; the first never right, the others right on 1 of 2.
    assert results["n-samples"][DEV_TASK]["effective"] == 4 and len(lm.kwargs) == 8
    assert results["results"][DEV_TASK]["acc,all_samples"] == pytest.approx(0.5 * 3 / 4)
    assert set(lm.calls) == {r["problem"] for r in rows[2:]}  # the test problems never asked
