"""A rule script that fails (through rlpredict.workflow.run_script) leaves the full traceback
in the rule's log and one line on the terminal, in a real Snakemake run."""

from __future__ import annotations

import pytest
from conftest import run_snakemake

SNAKEFILE = """
rule fails:
    output:
        "out/{kind}.txt",
    log:
        "logs/{kind}.log",
    script:
        "fail.py"
"""

# An expected error names the file and the problem; an unexpected one is a bug inside a
# helper (here pandas' KeyError for a missing column).
SCRIPT = """
import pandas as pd

from rlpredict.workflow import run_script


def column_of_a_table():
    return pd.DataFrame({"accuracy": [0.5]})["acuracy"]


def main(smk):
    print("reading the inputs")
    if smk.wildcards.kind == "expected":
        raise ValueError("data/test.jsonl: line 3 is not JSON")
    column_of_a_table()


run_script(main, snakemake)
"""


@pytest.fixture
def workdir(tmp_path):
    (tmp_path / "Snakefile").write_text(SNAKEFILE)
    (tmp_path / "fail.py").write_text(SCRIPT)
    return tmp_path


def run_rule(workdir, kind: str) -> tuple[list[str], str]:
    """The rlpredict lines on the terminal and the rule's log, after the job failed."""
    result = run_snakemake(workdir, f"out/{kind}.txt", "--cores", "1")
    assert result.returncode != 0
    terminal = result.stdout + result.stderr
    assert "Traceback (most recent call last)" not in terminal
    lines = [line for line in terminal.splitlines() if line.startswith("rlpredict:")]
    return lines, (workdir / "logs" / f"{kind}.log").read_text()


def test_an_unexpected_error_leaves_its_traceback_in_the_log(workdir):
    lines, log = run_rule(workdir, "unexpected")
    assert lines == [
        "rlpredict: error in rule fails: unexpected KeyError: 'acuracy' "
        "(full traceback in logs/unexpected.log)"
    ]
    assert "reading the inputs" in log
    assert lines[0] in log
    assert "Traceback (most recent call last)" in log
    assert "in column_of_a_table" in log and 'pd.DataFrame({"accuracy": [0.5]})' in log
    assert log.rstrip().endswith("KeyError: 'acuracy'")
    assert not (workdir / "out" / "unexpected.txt").exists()


def test_an_expected_error_is_one_line_on_the_terminal_and_in_the_log(workdir):
    lines, log = run_rule(workdir, "expected")
    assert lines == ["rlpredict: error in rule fails: data/test.jsonl: line 3 is not JSON"]
    assert "reading the inputs" in log
    assert log.rstrip().endswith(lines[0])
    assert "Traceback (most recent call last)" not in log
