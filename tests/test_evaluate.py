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
