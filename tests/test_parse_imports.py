"""Parsing the Snakefile (every `snakemake` call, `-n` included) loads no deep-learning
library: the modules the rule files import, and what the config check calls, stay free of
torch, transformers and lm_eval, which only the jobs themselves load."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
from conftest import REPO, copy_workflow, snakemake_bin

HEAVY = ("torch", "transformers", "lm_eval")


def parse_time_modules() -> list[str]:
    """Every ``rlpredict`` module the Snakefile and the rule files import."""
    files = [REPO / "workflow" / "Snakefile", *sorted((REPO / "workflow" / "rules").glob("*.smk"))]
    found = {
        m
        for f in files
        for m in re.findall(r"^\s*from (rlpredict[\w.]*) import", f.read_text(), re.M)
    }
    return sorted(found)


def test_the_rule_files_import_modules_free_of_torch():
    modules = parse_time_modules()
    assert "rlpredict.workflow" in modules and "rlpredict.backends" in modules
    code = (
        "import importlib, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "", f"imported at parse time: {result.stdout.strip()}"


@pytest.mark.parametrize("configfile", ["config/config.yaml", "config/pretrained.yaml"])
def test_a_dry_run_imports_no_deep_learning_library(tmp_path, configfile):
    """The whole parse (config check, planning, every rule file) of a dry run, as Python's
    import log of the snakemake process records it."""
    workdir = copy_workflow(tmp_path)
    result = subprocess.run(
        [sys.executable, "-X", "importtime", snakemake_bin(), "-n", "-q", "--cores", "1"]
        + ["--configfile", configfile],
        cwd=workdir,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    imported = set(re.findall(r"^import time:.*\|\s+([\w.]+)$", result.stderr, re.M))
    assert "rlpredict.workflow" in imported  # the log does cover the Snakefile's imports
    assert not imported & set(HEAVY), sorted(imported & set(HEAVY))
