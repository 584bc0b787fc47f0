"""Defaults live in one place, the schema: config/README.md's default column says what the
schema says for every key, and config/config.yaml sets only what differs from it."""

import re

import pytest
import yaml
from conftest import REPO

SCHEMA = yaml.safe_load((REPO / "workflow" / "schemas" / "config.schema.yaml").read_text())
README = (REPO / "config" / "README.md").read_text()
MODULES = SCHEMA["properties"]["ablate"]["properties"]["modules"]["default"]
# Defaults the README describes in words instead of spelling them out.
DESCRIBED = {"attention + MLP projections": MODULES}
HEADING = re.compile(r"^#{2,3} (?:`([a-z_.]+)`|(Top level))")
ROW = re.compile(r"^\| `([a-z_.]+)` \| (.*?) \| ")


def schema_node(dotted: str) -> dict | None:
    node = SCHEMA
    for part in dotted.split("."):
        node = node.get("properties", {}).get(part)
        if node is None:
            return None
    return node


def schema_defaults(node: dict = SCHEMA, prefix: str = "") -> dict[str, object]:
    """Dotted key → default of every leaf key that has one (objects are not leaves)."""
    found = {}
    for name, sub in node.get("properties", {}).items():
        dotted = f"{prefix}{name}"
        if "properties" in sub:
            found.update(schema_defaults(sub, f"{dotted}."))
        elif "default" in sub:
            found[dotted] = sub["default"]
    return found


def readme_defaults() -> dict[str, str]:
    """Dotted key → the default cell of each row of config/README.md's key tables (the
    sections named after a config key, and "Top level")."""
    rows, section = {}, None
    for line in README.splitlines():
        heading = HEADING.match(line)
        if line.startswith("#"):
            section = (heading[1] or "") if heading else None
            continue
        row = ROW.match(line)
        if row and section is not None:
            rows[f"{section}.{row[1]}".lstrip(".")] = row[2]
    return rows


def cell_value(cell: str) -> object:
    """A default cell as a value: `1e-3` → 0.001, `[free, anchored]` → a list, `""` → ''."""
    if cell in DESCRIBED:
        return DESCRIBED[cell]
    code = re.fullmatch(r"`(.*)`", cell)
    assert code, f"default cell {cell!r} is neither `a value` nor a described default"
    value = yaml.safe_load(code[1])
    if isinstance(value, str):
        try:
            return float(value)  # YAML 1.1 reads 1e-3 as a string
        except ValueError:
            return value
    return value


README_ROWS = readme_defaults()


def test_readme_lists_every_key_that_has_a_default():
    missing = sorted(set(schema_defaults()) - set(README_ROWS))
    assert not missing, f"config/README.md has no row for {missing}"


@pytest.mark.parametrize("key", sorted(README_ROWS))
def test_readme_default_is_the_schema_default(key):
    node = schema_node(key)
    assert node is not None, f"config/README.md documents {key}, which the schema does not have"
    cell = README_ROWS[key]
    if "default" not in node:  # required, or set by a preset
        assert cell == "(required)" and key in SCHEMA["required"] or cell.startswith("*preset*")
        return
    assert cell_value(cell) == node["default"], f"{key}: README {cell}, schema {node['default']}"


def test_config_yaml_sets_only_what_differs_from_the_schema():
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    defaults = schema_defaults()

    def leaves(node: dict, prefix: str = ""):
        for name, value in node.items():
            if isinstance(value, dict):
                yield from leaves(value, f"{prefix}{name}.")
            else:
                yield f"{prefix}{name}", value

    repeated = [key for key, value in leaves(config) if defaults.get(key, object()) == value]
    assert not repeated, f"config/config.yaml repeats the schema's defaults of {repeated}"
    assert config["run"]  # what a user must see to run
