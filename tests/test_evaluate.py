from pathlib import Path

import pytest

from rlpredict.checkpoints import CheckpointError
from rlpredict.evaluate import evaluate_model, generation_overrides, prepare_task_dir

TASK = Path(__file__).resolve().parents[1] / "workflow" / "tasks" / "arithmetic"
TASK_FILES = [TASK / "arithmetic.yaml", TASK / "utils.py"]


def test_task_dir_points_at_the_data_and_sets_repeats(tmp_path):
    data = tmp_path / "test.jsonl"
    data.write_text('{"prompt": "1+2=", "answer": "3"}\n')
    out = prepare_task_dir(TASK_FILES, data, tmp_path / "task", repeats=4)
    text = (out / "arithmetic.yaml").read_text()
    assert str(data.resolve()) in text and "__DATA_FILE__" not in text
    assert text.rstrip().endswith("repeats: 4")
    assert (out / "utils.py").read_text() == (TASK / "utils.py").read_text()
    with pytest.raises(FileNotFoundError, match="missing.jsonl"):
        prepare_task_dir(TASK_FILES, tmp_path / "missing.jsonl", tmp_path / "task2")


def test_generation_overrides():
    assert generation_overrides({"temperature": 0.0, "max_gen_toks": 6}) == {"max_gen_toks": 6}
    sampled = generation_overrides({"temperature": 0.7, "top_p": 0.9})
    assert sampled == {"do_sample": True, "temperature": 0.7, "top_p": 0.9}


@pytest.mark.parametrize("problem", ["missing", "truncated"])
def test_bad_checkpoint_stops_before_evaluation(tmp_path, problem):
    model_dir = tmp_path / "step_10"
    if problem == "truncated":
        model_dir.mkdir()
        (model_dir / "config.json").write_text('{"model_type": "qwen2"}')
        header = b'{"w": {"dtype": "F32", "shape": [4, 4], "data_offsets": [0, 64]}}'
        (model_dir / "model.safetensors").write_bytes(
            len(header).to_bytes(8, "little") + header + b"\0" * 10
        )
    data = tmp_path / "test.jsonl"
    data.write_text('{"prompt": "1+2=", "answer": "3"}\n')
    out = tmp_path / "eval" / "step_10.json"
    with pytest.raises(CheckpointError, match="step_10"):
        evaluate_model(model_dir, TASK_FILES, data, "arithmetic", out, {}, "step_10")
    assert not out.exists() and not out.parent.exists()


def test_sampled_score_is_the_mean_over_all_k_responses():
    import importlib.util

    spec = importlib.util.spec_from_file_location("arith_utils", TASK / "utils.py")
    utils = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(utils)
    doc = {"prompt": "1+2=", "answer": "3"}
    # lm-eval hands the filtered responses over as one list per document
    assert utils.process_results(doc, [["3", "4", " 3", "33"]]) == {"exact_match": 0.5}
    assert utils.process_results(doc, ["3"]) == {"exact_match": 1.0}


def test_sampled_evaluation_scores_every_repeat(tmp_path):
    """With repeats k, lm-eval's default filter keeps only the first response; the task's
    filter must hand all k to the scorer so that the accuracy is avg@k."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    from rlpredict.model import build_model, build_tokenizer, save_model_dir
    from rlpredict.tasks.arithmetic import verify

    tok = build_tokenizer()
    sizes = dict(hidden_size=32, intermediate_size=64, num_layers=1, num_heads=2)
    model = build_model(tok, {**sizes, "num_kv_heads": 1, "max_positions": 32}, seed=0)
    model_dir = save_model_dir(model, tok, tmp_path / "model")
    data = tmp_path / "test.jsonl"
    data.write_text("".join(f'{{"prompt": "{a}+1=", "answer": "{a + 1}"}}\n' for a in range(5)))
    task_dir = prepare_task_dir(TASK_FILES, data, tmp_path / "task", repeats=4)
    results = lm_eval.simple_evaluate(
        model="hf",
        model_args=f"pretrained={model_dir},dtype=float32",
        device="cpu",
        tasks=["arithmetic"],
        task_manager=TaskManager(include_path=str(task_dir), include_defaults=False),
        batch_size=8,
        gen_kwargs=generation_overrides({"temperature": 1.0}),
        log_samples=True,
    )
    samples = results["samples"]["arithmetic"]
    assert len(samples) == 5
    for sample in samples:
        (responses,) = sample["filtered_resps"]  # one list of responses per document
        assert len(responses) == 4, sample["filtered_resps"]
        expected = sum(verify(r, sample["doc"]["answer"]) for r in responses) / 4
        assert sample["exact_match"] == expected
    assert "exact_match,none" in results["results"]["arithmetic"]


@pytest.mark.parametrize("backend", ["hf", "vllm"])
def test_a_model_a_method_could_not_build_is_recorded_not_evaluated(tmp_path, backend):
    """A dir holding only the reason a method built no model (AlphaRL with equal labels)
    evaluates to a result with no accuracy and that reason, on either backend."""
    import json

    from rlpredict import evaluate_vllm
    from rlpredict.checkpoints import write_not_built

    model_dir, out = tmp_path / "alpharl", tmp_path / "eval.json"
    write_not_built(model_dir, "not run: all window accuracy labels are equal")
    if backend == "hf":
        result = evaluate_model(
            model_dir, TASK_FILES, tmp_path / "x.jsonl", "arithmetic", out, {}, "extrap/alpharl"
        )
    else:
        result = evaluate_vllm.evaluate_model(
            model_dir, {"tasks": ["math500"]}, out, "extrap/alpharl"
        )
    written = json.loads(out.read_text())
    assert written == result
    assert written["accuracy"] is None and "labels are equal" in written["skipped"]
