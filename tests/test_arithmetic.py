import pytest

from rlpredict.tasks.arithmetic import generate_splits, load_split, verify, write_jsonl

SIZES = {"train": 300, "dev": 50, "test": 80}


def test_splits_are_deterministic_and_disjoint():
    first = generate_splits(SIZES, digits=3, seed=7)
    again = generate_splits(SIZES, digits=3, seed=7)
    other = generate_splits(SIZES, digits=3, seed=8)
    assert first == again
    assert first != other
    prompts = [set(r["prompt"] for r in first[name]) for name in ("train", "dev", "test")]
    assert sum(len(p) for p in prompts) == sum(SIZES.values())
    assert not (prompts[0] & prompts[1] or prompts[0] & prompts[2] or prompts[1] & prompts[2])


def test_answers_are_the_sums():
    for row in generate_splits(SIZES, digits=3, seed=0)["test"]:
        a, b = row["prompt"].rstrip("=").split("+")
        assert 100 <= int(a) <= 999 and 100 <= int(b) <= 999
        assert int(row["answer"]) == int(a) + int(b)


def test_too_many_problems_is_an_error():
    with pytest.raises(ValueError, match="distinct 1-digit problems"):
        generate_splits({"train": 100, "dev": 0, "test": 0}, digits=1)


@pytest.mark.parametrize(
    ("response", "expected"),
    [("579", 1.0), (" 579 ", 1.0), ("5790", 0.0), ("57", 0.0), ("", 0.0), ("578", 0.0)],
)
def test_verify(response, expected):
    assert verify(response, "579") == expected


def test_jsonl_round_trip_and_bad_rows(tmp_path):
    rows = generate_splits(SIZES, digits=3, seed=0)["dev"]
    write_jsonl(rows, tmp_path / "dev.jsonl")
    assert load_split(tmp_path / "dev.jsonl") == rows
    (tmp_path / "bad.jsonl").write_text('{"prompt": "1+1="}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:1: row needs 'prompt' and 'answer'"):
        load_split(tmp_path / "bad.jsonl")
    (tmp_path / "broken.jsonl").write_text('{"prompt": \n')
    with pytest.raises(ValueError, match=r"broken.jsonl:1: not valid JSON"):
        load_split(tmp_path / "broken.jsonl")
    with pytest.raises(FileNotFoundError, match="missing.jsonl"):
        load_split(tmp_path / "missing.jsonl")
