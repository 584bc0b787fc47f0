"""Every per-rule conda environment provides what its rule's script imports.

With ``--sdm conda`` a rule's script runs in the environment its ``conda:`` directive names,
so a package the script needs and the env file lacks fails the job at paper scale only. This
test reads, for every rule of every rule file, its env file(s) and its script, follows the
script's imports through ``rlpredict`` (the functions it reaches, by name, so a lazy import
inside an unrelated function does not count) and checks that each third-party package is
pinned in the env file (or pinned exactly by a pinned package, see ``EXACT_PINS``).
"""

from __future__ import annotations

import ast
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from conftest import REPO

SRC = REPO / "src"
RULES = REPO / "workflow" / "rules"
SCRIPTS = REPO / "workflow" / "scripts"

# Import name → distribution name, where they differ beyond case and -/_.
DISTRIBUTION = {
    "yaml": "pyyaml",
    "sklearn": "scikit-learn",
    "lm_eval": "lm-eval",
    "math_verify": "math-verify",
    "huggingface_hub": "huggingface-hub",
    "google": "protobuf",
}

# Methods of pandas that import an optional package on call (pandas' "optional dependencies"):
# DataFrame.to_markdown needs tabulate, the parquet readers and writers need pyarrow.
OPTIONAL_BACKENDS = {
    "to_markdown": "tabulate",
    "to_parquet": "pyarrow",
    "read_parquet": "pyarrow",
}

# Packages a pinned requirement itself pins exactly (``==``), read from the released wheels'
# METADATA (Requires-Dist): verl-0.9.1 extra "vllm" pins torch==2.11.0, transformers==5.9.0,
# vllm==0.24.0; vllm-0.33.0 pins torch==2.14.0. A range pin (vllm 0.33's transformers
# >=5.16.1,<5.21) does not count: the env file pins such a package itself.
EXACT_PINS = {
    "verl[vllm]==0.9.1": {"torch", "transformers", "vllm"},
    "vllm==0.33.0": {"torch"},
}


def normalize(name: str) -> str:
    """PEP 503 normalized distribution name."""
    return re.sub(r"[-_.]+", "-", name).lower()


def distribution_of(import_name: str) -> str:
    """The distribution that provides a top-level import name."""
    return normalize(DISTRIBUTION.get(import_name, import_name))


# ---- the rules: env files and scripts, from Snakemake's own parser ----------------------


@dataclass(frozen=True)
class Rule:
    name: str
    rule_file: str
    script: Path
    envs: tuple[Path, ...]


def compiled_rule_file(path: Path) -> ast.Module:
    """A rule file as the Python code Snakemake compiles it to (rules become decorated
    functions: ``@workflow.conda(...)``, ``@workflow.script(...)``)."""
    from snakemake import parser
    from snakemake.sourcecache import LocalSourceFile

    cache = SimpleNamespace(open=lambda src: open(src.get_path_or_uri(secret_free=True)))  # noqa: SIM115
    code, _ = parser.parse(LocalSourceFile(str(path)), SimpleNamespace(sourcecache=cache), {})
    return ast.parse(code)


def yaml_literals(node: ast.AST) -> set[str]:
    """String constants ending in .yaml anywhere under ``node`` (both arms of an ``x if c
    else y``)."""
    return {
        n.value
        for n in ast.walk(node)
        if isinstance(n, ast.Constant) and isinstance(n.value, str) and n.value.endswith(".yaml")
    }


def env_values(tree: ast.Module, node: ast.AST) -> set[str]:
    """The env paths a ``conda:`` argument can take: a literal, or every value assigned to
    the variable it names anywhere in the rule file (branches on config included)."""
    if isinstance(node, ast.Name):
        return {
            path
            for a in ast.walk(tree)
            if isinstance(a, ast.Assign)
            and any(isinstance(t, ast.Name) and t.id == node.id for t in a.targets)
            for path in yaml_literals(a.value)
        }
    return yaml_literals(node)


def decorator_arg(function: ast.FunctionDef, directive: str) -> ast.AST | None:
    for deco in function.decorator_list:
        if (
            isinstance(deco, ast.Call)
            and isinstance(deco.func, ast.Attribute)
            and deco.func.attr == directive
            and deco.args
        ):
            return deco.args[0]
    return None


def rules_with_envs() -> list[Rule]:
    """Every rule (of workflow/rules/*.smk and of the sweep's workflow/*.smk) that has both
    a ``conda:`` env and a ``script:``."""
    found = []
    for rule_file in [*sorted(RULES.glob("*.smk")), *sorted(RULES.parent.glob("*.smk"))]:
        tree = compiled_rule_file(rule_file)
        for function in ast.walk(tree):
            if not (isinstance(function, ast.FunctionDef) and function.name.startswith("__rule_")):
                continue
            conda, script = decorator_arg(function, "conda"), decorator_arg(function, "script")
            if conda is None or script is None:
                continue
            envs = tuple(sorted((rule_file.parent / p).resolve() for p in env_values(tree, conda)))
            found.append(
                Rule(
                    name=function.name.removeprefix("__rule_"),
                    rule_file=rule_file.name,
                    script=(rule_file.parent / script.value).resolve(),
                    envs=envs,
                )
            )
    return found


# ---- the imports: a name-level call graph over the script and src/rlpredict -------------


@dataclass
class Module:
    name: str
    tree: ast.Module
    definitions: dict[str, ast.AST] = field(default_factory=dict)
    aliases: dict[str, tuple[str, str]] = field(default_factory=dict)  # local → (module, attr)


def module_path(name: str) -> Path | None:
    """The source file of an ``rlpredict`` module, or None if ``name`` is not one."""
    base = SRC.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def absolute(module: Module, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    package = module.name.split(".")
    if module_path(module.name) and module_path(module.name).name != "__init__.py":
        package = package[:-1]
    package = package[: len(package) - node.level + 1]
    return ".".join(package + ([node.module] if node.module else []))


def load_module(name: str, path: Path) -> Module:
    module = Module(name, ast.parse(path.read_text(), filename=str(path)))
    for node in module.tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            module.definitions[node.name] = node
    for node in ast.walk(module.tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                module.aliases[a.asname or a.name.split(".")[0]] = (
                    (a.name, "") if a.asname else (a.name.split(".")[0], "")
                )
        elif isinstance(node, ast.ImportFrom):
            source = absolute(module, node)
            for a in node.names:
                module.aliases[a.asname or a.name] = (source, a.name)
    return module


def module_level(tree: ast.Module) -> list[ast.AST]:
    """The statements that run on import: everything but function and class bodies (a
    class's decorators, bases and class-level statements run too)."""
    nodes: list[ast.AST] = []
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            nodes += [*node.decorator_list, *node.args.defaults]
        elif isinstance(node, ast.ClassDef):
            nodes += [*node.decorator_list, *node.bases]
            nodes += [s for s in node.body if not isinstance(s, (ast.FunctionDef,))]
        else:
            nodes.append(node)
    return nodes


class ImportGraph:
    """Third-party packages a script needs: imports that run when the script's modules are
    imported or when a function the script can reach is called."""

    def __init__(self) -> None:
        self.modules: dict[str, Module] = {}
        self.done: set[tuple[str, str]] = set()
        self.todo: list[tuple[str, str]] = []
        self.packages: dict[str, str] = {}  # distribution → where it is needed

    def reach(self, module: str, name: str = "") -> None:
        """Mark ``module`` imported and, with ``name``, its definition ``name`` called."""
        if (module, "") not in self.done:
            self.done.add((module, ""))
            self.todo.append((module, ""))
        if name and (module, name) not in self.done:
            self.done.add((module, name))
            self.todo.append((module, name))

    def module(self, name: str) -> Module | None:
        if name not in self.modules:
            path = module_path(name)
            if path is None:
                return None
            self.modules[name] = load_module(name, path)
        return self.modules[name]

    def need(self, import_name: str, where: str) -> None:
        top = import_name.split(".")[0]
        if top in sys.stdlib_module_names or top in {"__future__", "_rlpredict", "rlpredict"}:
            return
        self.packages.setdefault(distribution_of(top), where)

    def visit(self, module: Module, nodes: list[ast.AST]) -> None:
        where = module.name
        for root in nodes:
            for node in ast.walk(root):
                if isinstance(node, ast.Import):
                    for a in node.names:
                        self.resolve_import(a.name, "", where)
                elif isinstance(node, ast.ImportFrom):  # imported, not yet called
                    source = absolute(module, node)
                    for a in node.names:
                        self.resolve_import(source, a.name, where, used=False)
                elif isinstance(node, ast.Name):
                    self.resolve_name(module, node.id)
                elif isinstance(node, ast.Attribute):
                    if node.attr in OPTIONAL_BACKENDS:
                        self.need(OPTIONAL_BACKENDS[node.attr], f"{where} (.{node.attr})")
                    if isinstance(node.value, ast.Name):
                        target, attr = module.aliases.get(node.value.id, ("", ""))
                        if target.startswith("rlpredict") and not attr:
                            self.resolve_import(target, node.attr, where)
                elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                    match = re.fullmatch(r"(rlpredict[\w.]*):(\w+)", node.value)
                    if match:  # a registry's "module:function" reference, imported on use
                        self.resolve_import(match[1], match[2], where)

    def resolve_import(self, source: str, name: str, where: str, used: bool = True) -> None:
        """Mark ``source`` imported and, when ``used``, its definition ``name`` reached."""
        if not source.startswith("rlpredict"):
            self.need(source, where)
            return
        if name and self.module(f"{source}.{name}"):  # a submodule
            self.reach(f"{source}.{name}")
        elif self.module(source):
            defined = used and name in self.module(source).definitions
            self.reach(source, name if defined else "")
        for part in range(1, source.count(".") + 1):  # parent packages run their __init__
            parent = source.rsplit(".", part)[0]
            if self.module(parent):
                self.reach(parent)

    def resolve_name(self, module: Module, name: str) -> None:
        if name in module.definitions:
            self.reach(module.name, name)
        elif name in module.aliases:
            source, attr = module.aliases[name]
            if source.startswith("rlpredict"):
                self.resolve_import(source, attr, module.name)

    def run(self, script: Path) -> dict[str, str]:
        """Walk the whole script (its functions are its job), then whatever it reaches."""
        name = f"script {script.name}"
        self.modules[name] = load_module(name, script)
        self.visit(self.modules[name], [self.modules[name].tree])
        while self.todo:
            module_name, definition = self.todo.pop()
            module = self.module(module_name)
            if definition:
                self.visit(module, [module.definitions[definition]])
            else:
                self.visit(module, module_level(module.tree))
        return self.packages


def third_party_packages(script: Path) -> dict[str, str]:
    """Normalized distribution → the module that needs it, for one script."""
    return ImportGraph().run(script)


# ---- the env files --------------------------------------------------------------------


def requirement_name(spec: str) -> str:
    return normalize(re.split(r"[\s\[<>=!~;]", spec.strip(), maxsplit=1)[0])


def env_packages(env_file: Path) -> set[str]:
    """Normalized names of every conda and pip dependency of an env file, plus what a pinned
    dependency pins exactly (``EXACT_PINS``)."""
    provided: set[str] = set()
    for dep in yaml.safe_load(env_file.read_text())["dependencies"]:
        specs = dep["pip"] if isinstance(dep, dict) else [dep]
        for spec in specs:
            spec = spec.split("#")[0].strip()
            if not spec or spec.startswith("-"):
                continue
            provided.add(requirement_name(spec))
            provided |= {normalize(n) for n in EXACT_PINS.get(spec.replace(" ", ""), ())}
    return provided


RULES_WITH_ENVS = rules_with_envs()
CASES = [
    pytest.param(rule, env, id=f"{rule.name}@{rule.rule_file}-{env.name}")
    for rule in RULES_WITH_ENVS
    for env in rule.envs
]


def test_the_rule_files_are_read():
    scripts = {rule.script.name for rule in RULES_WITH_ENVS}
    assert {"accuracy_table.py", "train_verl.py", "evaluate_vllm.py", "sweep_table.py"} <= scripts
    convert = next(r for r in RULES_WITH_ENVS if r.name == "convert_checkpoint")
    assert {e.name for e in convert.envs} == {"verl.yaml", "analysis.yaml"}  # both branches
    for rule in RULES_WITH_ENVS:
        assert rule.script.is_file(), rule
        assert rule.envs and all(env.is_file() for env in rule.envs), rule


def test_the_import_graph_finds_lazy_and_optional_packages():
    tables = third_party_packages(SCRIPTS / "accuracy_table.py")
    assert {"pandas", "tabulate"} <= set(tables)  # tabulate: DataFrame.to_markdown
    assert "torch" not in tables  # rlpredict.workflow's lazy imports are not reached
    logits = third_party_packages(SCRIPTS / "evaluate_logits.py")
    assert {"torch", "transformers", "lm-eval"} <= set(logits)
    extrapolate = third_party_packages(SCRIPTS / "extrapolate.py")
    assert {"torch", "safetensors"} <= set(extrapolate)


@pytest.mark.parametrize(("rule", "env"), CASES)
def test_the_env_provides_what_the_script_imports(rule, env):
    needed = third_party_packages(rule.script)
    missing = {pkg: where for pkg, where in needed.items() if pkg not in env_packages(env)}
    assert not missing, (
        f"rule {rule.name} ({rule.rule_file}) runs {rule.script.name} in {env.name}, which "
        f"lacks: {', '.join(f'{p} (needed by {w})' for p, w in sorted(missing.items()))}"
    )
