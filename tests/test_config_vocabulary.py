"""The config names extrapolation methods as the registry does (rlpredict.methods): the
schema's choices are the registry's names, each method's parameters sit next to the list,
and a config still written with the old keys stops with one line saying what replaces them."""

import re

import pytest
import yaml
from conftest import REPO, copy_workflow, run_snakemake

from rlpredict.methods import METHODS, REGISTRY, VARIANT_KEY, configured_methods
from rlpredict.plan import plan_jobs
from rlpredict.workflow import ConfigError, check_workflow_config

SCHEMA = yaml.safe_load((REPO / "workflow" / "schemas" / "config.schema.yaml").read_text())
EXTRAPOLATE = SCHEMA["properties"]["extrapolate"]["properties"]
SHIPPED = sorted([*(REPO / "config").glob("*.yaml"), *(REPO / "config" / "paper").glob("*.yaml")])
OLD_KEYS = ("two_point", "lstsq", "expo_alphas", "relex", "alpharl_targets", "logits")


def test_schema_method_names_are_the_registry_names():
    methods = EXTRAPOLATE["methods"]
    assert methods["items"]["enum"] == list(METHODS)
    assert methods["default"] == [m.name for m in REGISTRY]  # every method runs by default


def test_each_method_with_variants_has_its_parameter_next_to_it():
    with_variants = {m.name for m in REGISTRY if m.variant is not None}
    assert set(VARIANT_KEY) == with_variants
    for name, key in VARIANT_KEY.items():
        parameter = EXTRAPOLATE[name]["properties"][key]
        assert parameter["type"] == "array" and parameter["minItems"] == 1, name


def test_jobs_follow_the_listed_order_once_per_variant():
    section = {
        "methods": ["logits", "alpharl", "expo", "lstsq-anchored"],
        "expo": {"alphas": [2, 1.5]},
        "alpharl": {"targets": ["oracle"]},
    }
    chosen = [method.job_id(variant) for method, variant in configured_methods(section)]
    assert chosen == ["logits", "alpharl-oracle", "expo-a2", "expo-a1.5", "lstsq-anchored"]
    # a method that is not listed is not run, whatever its parameters say
    section["methods"] = ["two-point"]
    assert [m.name for m, _ in configured_methods(section)] == ["two-point"]


def test_planned_job_ids_are_the_names_the_config_lists():
    settings = {"windows": [0.5], "methods": ["two-point", "relex"], "target_step": None}
    assert [job.method for job in plan_jobs([0, 10, 20, 30, 40], settings)] == [
        "two-point",
        "relex",
    ]


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_configs_use_the_registry_names(path):
    text = path.read_text()
    for key in OLD_KEYS[:-1]:  # `logits` is also a method name
        assert not re.search(rf"^\s*{key}:", text, re.M), (path.name, key)
    methods = (yaml.safe_load(text).get("extrapolate") or {}).get("methods")
    assert methods is None or set(methods) <= set(METHODS)


def check_file(tmp_path, extrapolate: dict) -> str:
    """The ConfigError of a run config file with this ``extrapolate`` section."""
    path = tmp_path / "old.yaml"
    config = {"run": "r", "extrapolate": extrapolate}
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(ConfigError) as err:
        check_workflow_config(config, REPO, [str(REPO / "config" / "config.yaml"), str(path)])
    return str(err.value)


@pytest.mark.parametrize(
    ("methods", "replacement"),
    [
        (
            {
                "two_point": True,
                "lstsq": ["free", "anchored"],
                "expo_alphas": [1.5],
                "relex": True,
                "alpharl_targets": ["forecast", "oracle"],
                "logits": True,
            },
            "extrapolate: {methods: [two-point, lstsq-free, lstsq-anchored, expo, relex, "
            "alpharl, logits]}",
        ),
        (
            {"alpharl_targets": [], "logits": False},
            "extrapolate: {methods: [two-point, lstsq-free, lstsq-anchored, expo, relex]}",
        ),
        (
            {"two_point": False, "lstsq": ["anchored"], "expo_alphas": [2, 3], "relex": False},
            "extrapolate: {methods: [lstsq-anchored, expo, alpharl, logits], "
            "expo: {alphas: [2, 3]}}",
        ),
        (
            {"alpharl_targets": ["oracle"]},
            "alpharl: {targets: [oracle]}}",
        ),
    ],
)
def test_old_method_keys_stop_with_one_line_naming_file_keys_and_replacement(
    tmp_path, methods, replacement
):
    message = check_file(tmp_path, {"methods": methods})
    assert len(message.splitlines()) == 1, message
    assert message.startswith("config extrapolate.methods: old keys ")
    assert f"old keys {', '.join(sorted(methods))} " in message
    assert replacement in message
    assert message.endswith("old.yaml)")  # the file that sets them


def test_old_keys_stop_a_dry_run_with_one_line(tmp_path):
    workdir = copy_workflow(tmp_path)
    old = {"run": "old", "extrapolate": {"methods": {"expo_alphas": [2.0], "logits": False}}}
    (workdir / "old.yaml").write_text(yaml.safe_dump(old))
    result = run_snakemake(workdir, "-n", "--configfile", "old.yaml")
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.startswith("config ")]
    assert lines == [
        "config extrapolate.methods: old keys expo_alphas, logits (methods are now listed by "
        "name); write extrapolate: {methods: [two-point, lstsq-free, lstsq-anchored, expo, "
        "relex, alpharl], expo: {alphas: [2.0]}} (old.yaml)"
    ], result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert not (workdir / "results").exists()


def test_config_readme_describes_every_method():
    readme = (REPO / "config" / "README.md").read_text()
    rows = set(re.findall(r"^\| `([a-z0-9-]+)` \|", readme.split("| method |", 1)[1], re.M))
    assert set(METHODS) <= rows


def test_old_keys_stop_the_sweep_with_one_line(tmp_path):
    workdir = copy_workflow(tmp_path)
    sweep = yaml.safe_load((REPO / "config" / "sweep.yaml").read_text())
    sweep["extrapolate"] = {"methods": {"relex": False}}
    (workdir / "old_sweep.yaml").write_text(yaml.safe_dump(sweep))
    result = run_snakemake(
        workdir, "-n", "-s", "workflow/sweep.smk", "--configfile", "old_sweep.yaml"
    )
    assert result.returncode != 0
    output = result.stdout + result.stderr
    lines = [line for line in output.splitlines() if "extrapolate.methods" in line]
    assert lines == [
        "sweep config: extrapolate.methods: old keys relex (methods are now listed by name); "
        "write extrapolate: {methods: [two-point, lstsq-free, lstsq-anchored, expo, alpharl, "
        "logits]} (old_sweep.yaml)"
    ], output
