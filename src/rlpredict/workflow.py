"""Small pieces the Snakemake scripts share: step lists, logging, one-line errors."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterable
from pathlib import Path

from rlpredict.atomic import atomic_output_file
from rlpredict.errors import CheckpointError

USER_ERRORS = (CheckpointError, FileNotFoundError, ValueError, RuntimeError)


def checkpoint_steps(total_steps: int, save_every: int) -> list[int]:
    """0 (the base), every ``save_every`` steps, and the final step."""
    if save_every > total_steps:
        raise ValueError(
            f"train.save_every: {save_every} exceeds train.steps ({total_steps}), so no "
            "checkpoint would be saved"
        )
    steps = list(range(0, total_steps + 1, save_every))
    if steps[-1] != total_steps:
        steps.append(total_steps)
    return steps


def setup_logging(log_file: str | Path) -> None:
    """Send logging, warnings, printed metrics and progress bars to the rule's log file."""
    Path(log_file).parent.mkdir(parents=True, exist_ok=True)
    stream = open(log_file, "w", buffering=1)  # noqa: SIM115 - lives as long as the script
    sys.stdout = sys.stderr = stream
    logging.basicConfig(
        level=logging.INFO,
        stream=stream,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        force=True,
    )
    logging.captureWarnings(True)


def run_script(main: Callable[[object], None], smk: object) -> None:
    """Run a rule's script body ``main(smk)`` with its output going to the rule's log file
    (``smk.log[0]``, the rule's ``log:``).

    Any exception ends the script with exit status 1. A known input problem
    (:data:`USER_ERRORS`, whose messages name the file and the problem) is one line on the
    terminal (the real stderr) and in the log. Anything else is a bug: the log gets its full
    traceback, the terminal one line with the exception's type and first line and the log
    to read.
    """
    log_file = smk.log[0]
    setup_logging(log_file)
    try:
        main(smk)
    except USER_ERRORS as err:
        stop(f"rlpredict: error in rule {smk.rule}: {err}", traceback=False)
    except Exception as err:
        first_line = next(iter(str(err).splitlines()), "")
        stop(
            f"rlpredict: error in rule {smk.rule}: unexpected {type(err).__name__}: "
            f"{first_line} (full traceback in {log_file})"
        )


def stop(message: str, traceback: bool = True) -> None:
    """Log ``message`` (with the traceback of the exception being handled when
    ``traceback``), print the message alone to the terminal (the stderr the script started
    with) and exit with status 1."""
    logging.getLogger("rlpredict").error(message, exc_info=traceback)
    print(message, file=sys.__stderr__)
    sys.exit(1)


def rank_tokens(ranks: list, percents: list) -> list[str]:
    """Path tokens for the ablation ranks, smallest first: ``4``, ``10pct``, ``full``."""
    ints = sorted({int(r) for r in ranks if r != "full"})
    tokens = [str(r) for r in ints] + [f"{p}pct" for p in sorted(set(percents))]
    return tokens + ["full"] if "full" in ranks else tokens


def rank_argument(token: str) -> str:
    """The rank as ``ablate_model`` takes it, from a path token."""
    return f"{token[:-3]}%" if token.endswith("pct") else token


def write_parquet(table, path: str | Path) -> None:
    """Parquet written under a temporary name and renamed when complete."""
    with atomic_output_file(path) as tmp:
        table.to_parquet(tmp, index=False)


class ConfigError(ValueError):
    """A config that cannot run as written: one line per problem, each naming the key."""


def _config_file(key: str, files: list[str]) -> str:
    """The config file that sets ``key`` (dotted; files in order of precedence, lowest
    first), else the last one given."""
    import os

    import yaml

    for path in reversed(files):
        try:
            node = yaml.safe_load(Path(path).read_text())
        except (OSError, yaml.YAMLError):
            continue
        for part in key.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if node is not None:
            return os.path.relpath(path)
    return os.path.relpath(files[-1]) if files else "--config"


def _key_and_problem(err: Exception) -> tuple[str, str]:
    """A message that starts with the key it is about, split into (key, problem)."""
    text = str(err)
    key = text.split(" ", 1)[0].rstrip(":")
    return key, text[len(key) :].lstrip(": ")


def schema_problems(config: dict, schema_path: str | Path) -> list[tuple[str, str]]:
    """(key, problem) for each schema violation (the most relevant per key), after filling
    the schema's defaults into ``config`` in place, as ``snakemake.utils.validate`` does."""
    import yaml
    from jsonschema import Draft202012Validator, validators
    from jsonschema.exceptions import relevance

    schema = yaml.safe_load(Path(schema_path).read_text())
    fill = Draft202012Validator.VALIDATORS["properties"]

    def properties(validator, props, instance, subschema):
        for name, sub in props.items():
            if "default" in sub and isinstance(instance, dict):
                instance.setdefault(name, sub["default"])
        yield from fill(validator, props, instance, subschema)

    validator = validators.extend(Draft202012Validator, {"properties": properties})(schema)
    found: dict[str, str] = {}
    for error in sorted(validator.iter_errors(config), key=relevance):
        key = ".".join(str(p) for p in error.absolute_path)
        message = error.message
        if error.validator == "additionalProperties":
            known = set(error.schema.get("properties", {}))
            extra = sorted(set(error.instance) - known)
            key = ".".join(filter(None, [key, extra[0] if extra else ""]))
            message = f"unknown key; known here: {', '.join(sorted(known))}"
        elif error.validator == "oneOf" and error.context:
            message = f"{error.instance!r} is not valid: {error.context[0].message}"
        found.setdefault(key or "(top level)", message)
    return list(found.items())


def matrix_shapes(model: dict) -> dict[str, tuple[int, int]]:
    """Shapes (out, in) of the 2-D weights of a Qwen2/Llama-style decoder, from its sizes:
    the ``model`` config section (scratch) or a ``config.json``'s keys."""
    get = model.get
    hidden = int(get("hidden_size"))
    heads = int(get("num_heads") or get("num_attention_heads"))
    kv = int(get("num_kv_heads") or get("num_key_value_heads") or heads)
    head_dim = int(get("head_dim") or hidden // heads)
    inter = int(get("intermediate_size"))
    layers = int(get("num_layers") or get("num_hidden_layers"))
    shapes = {}
    for i in range(layers):
        pre = f"model.layers.{i}."
        shapes[pre + "self_attn.q_proj.weight"] = (heads * head_dim, hidden)
        shapes[pre + "self_attn.k_proj.weight"] = (kv * head_dim, hidden)
        shapes[pre + "self_attn.v_proj.weight"] = (kv * head_dim, hidden)
        shapes[pre + "self_attn.o_proj.weight"] = (hidden, heads * head_dim)
        shapes[pre + "mlp.gate_proj.weight"] = (inter, hidden)
        shapes[pre + "mlp.up_proj.weight"] = (inter, hidden)
        shapes[pre + "mlp.down_proj.weight"] = (hidden, inter)
    return shapes


def rank_problem(rank: int | str, shapes: dict[str, tuple[int, int]], regex: str) -> str | None:
    """Why an integer ablation ``rank`` does not ablate what it says: it reaches min(m, n)
    of a selected matrix, which is then kept whole (as with ``full``); None if it is below
    every selected matrix's min(m, n), or not an integer rank."""
    if not isinstance(rank, int) or isinstance(rank, bool):
        return None
    import re

    pattern = re.compile(regex)
    dims = {name: min(shape) for name, shape in shapes.items() if pattern.search(name)}
    if not dims:
        return None
    smallest = min(dims.values())
    if rank < smallest:
        return None
    whole = sorted({name.rsplit(".", 2)[-2] for name, d in dims.items() if d <= rank})
    every = all(d <= rank for d in dims.values())
    return (
        f"rank {rank} is not below min(m, n) = {smallest} of the selected matrices, so "
        + ("every selected matrix is kept whole (it equals full)" if every else "")
        + (f"the {', '.join(whole)} matrices are kept whole" if not every else "")
        + f"; use ranks below {smallest}, a percentage "
        "(ablate.rank_percents) or full"
    )


def check_rank_against_model(rank: str, model_dir: str | Path, regex: str) -> None:
    """ValueError ``config ablate.ranks: …`` when an ablation rank token (``8``, ``10pct``,
    ``full``) reaches min(m, n) of a selected matrix of the model dir: the check for a base
    whose sizes were unknown when the config was checked (a hub model)."""
    from rlpredict.checkpoints import ModelReader

    with ModelReader(model_dir) as base:
        shapes = {n: base.shape(n) for n in base.names() if len(base.shape(n)) == 2}
    problem = rank_problem(int(rank) if str(rank).isdigit() else rank, shapes, regex)
    if problem:
        raise ValueError(f"config ablate.ranks: {problem} ({model_dir})")


def model_sizes(config: dict) -> dict | None:
    """The base model's sizes where they are known before it exists: the ``model`` section
    for a model built from scratch, a local model's ``config.json``; None for a hub model."""
    import json

    model = config["model"]
    if model["source"] == "scratch":
        return model
    if model["source"] == "local":
        path = Path(model["path"]) / "config.json"
        if path.is_file():
            return json.loads(path.read_text())
    return None


def meaning_problems(
    config: dict, steps: list[int], regrounding_keys: Iterable[str] = ()
) -> list[tuple[str, str]]:
    """(key, problem) for settings that parse but would plan nothing, or something other
    than what they say: a window holding no checkpoint, an ablation rank that keeps whole
    matrices, re-grounding settings that cannot run."""
    from rlpredict.plan import plan_jobs

    problems = []
    extrapolate = config["extrapolate"]
    if extrapolate["enabled"]:
        try:
            jobs = plan_jobs(steps, extrapolate)
        except ValueError as err:
            return [_key_and_problem(err)]
        for job in jobs:
            if job.method == "all":
                first = next(s for s in steps if s > 0)
                problems.append(
                    (
                        "extrapolate.windows",
                        f"window {job.window} holds no checkpoint (it ends at step "
                        f"{float(job.window) * steps[-1]:g}; checkpoints at steps "
                        f"{', '.join(map(str, steps[1:]))}); use a window of at least "
                        f"{first / steps[-1]:g} or a smaller train.save_every",
                    )
                )
    problems += lr_schedule_problems(config, steps)
    problems += regrounding_problems(config, regrounding_keys)
    ablate = config["ablate"]
    sizes = model_sizes(config) if ablate["enabled"] else None
    if sizes is not None:
        shapes = matrix_shapes(sizes)
        for rank in ablate["ranks"]:
            problem = rank_problem(rank, shapes, ablate["modules"])
            if problem:
                problems.append(("ablate.ranks", problem))
    return problems


def regrounding_chains(config: dict) -> dict:
    """The re-grounding chains the config asks for: chain name ``m{M}_n{N}`` → its segments
    (rlpredict.regrounding.plan_chain); the budget defaults to ``train.steps``. Raises
    ValueError naming the ``regrounding`` key at fault."""
    from rlpredict.regrounding import chain_name, plan_chain

    settings = config["regrounding"]
    budget = settings["budget"]
    if settings["segments"] is not None and budget is not None:
        raise ValueError("regrounding.segments: give a budget or a number of segments, not both")
    if settings["segments"] is None and budget is None:
        budget = config["train"]["steps"]
        too_long = [m for m, _ in settings["pairs"] if m > budget]
        if too_long:
            raise ValueError(
                f"regrounding.pairs: M = {too_long[0]} is more than the budget of {budget} real "
                "RL steps (regrounding.budget, by default train.steps); set "
                "regrounding.budget or regrounding.segments"
            )
    chains = {}
    for m, n in settings["pairs"]:
        name = chain_name(m, n)
        if name in chains:
            raise ValueError(f"regrounding.pairs: ({m}, {n}) is listed twice")
        chains[name] = plan_chain(
            m,
            n,
            budget=budget,
            segments=settings["segments"],
            lr_mode=settings["lr_schedule"],
            optimizer=settings["optimizer"],
            data=settings["data"],
        )
    return chains


def regrounding_backend_problem(config: dict, chains: dict) -> tuple[str, str] | None:
    """(key, problem) when the training backend cannot train the chains' segments: TRL
    trains any; verl trains each segment as a fresh run, so it cannot keep the optimizer
    state and can continue an lr schedule only where the segment's part is a schedule of its
    own (rlpredict.regrounding.verl_segment_config); a run trained elsewhere has no training
    to re-ground."""
    from rlpredict.regrounding import chain_real_steps, verl_segment_config

    backend = config["train"]["backend"]
    settings = config["regrounding"]
    if backend == "trl":
        return None
    if backend != "verl":
        return (
            "train.backend",
            f"re-grounding trains its segments with train.backend trl or verl, not {backend}",
        )
    if settings["optimizer"] == "keep":
        return (
            "regrounding.optimizer",
            "keep needs train.backend trl: every verl segment is a fresh verl run, whose "
            "optimizer starts empty (verl loads an optimizer state only to resume its own "
            "checkpoint); use reset (the authors')",
        )
    for chain in chains.values():
        for segment in chain:
            try:
                verl_segment_config(config, segment, chain_real_steps(chain))
            except ValueError as err:
                return _key_and_problem(err)
    return None


def regrounding_problems(config: dict, configured: Iterable[str] = ()) -> list[tuple[str, str]]:
    """(key, problem) for re-grounding settings that cannot run, checked when re-grounding
    is enabled or the config sets any ``regrounding`` key (``configured``: the keys the
    config files set, before the schema's defaults): chains that plan nothing, or segments
    the training backend cannot train. A config that leaves the block alone is not checked:
    the default pairs may not fit a short run, and a run trained elsewhere has nothing to
    re-ground. The ``regrounding`` target checks the same when asked for (see
    rules/regrounding.smk)."""
    if not (config["regrounding"]["enabled"] or set(configured)):
        return []
    try:
        chains = regrounding_chains(config)
    except ValueError as err:
        return [_key_and_problem(err)]
    problem = regrounding_backend_problem(config, chains)
    return [problem] if problem else []


def lr_schedule_problems(config: dict, steps: list[int]) -> list[tuple[str, str]]:
    """(key, problem) when ``extrapolate.time: lr`` needs a learning-rate schedule that the
    backend that trained the run does not give (rlpredict.schedules.run_lr_schedule)."""
    from rlpredict.schedules import needs_lr_schedule, run_lr_schedule

    if not needs_lr_schedule(config["extrapolate"]):
        return []
    try:
        run_lr_schedule(config, steps)
    except ValueError as err:
        return [_key_and_problem(err)]
    return []


def check_workflow_config(
    config: dict, root: str | Path, files: list[str], schema: str | Path | None = None
) -> list[int]:
    """Validate ``config`` against the schema (filling its defaults), the combinations of
    backends and the meaning of the settings, before any job is planned; returns the
    checkpoint steps. Raises ConfigError with one line ``config KEY: problem (file)`` per
    problem found. ``schema`` defaults to ``root/workflow/schemas/config.schema.yaml``."""
    from rlpredict.backends import check_config, existing_steps
    from rlpredict.methods import old_methods_problem

    root = Path(root)
    files = [str(f) for f in files]
    extrapolate = config.get("extrapolate")
    old = old_methods_problem(extrapolate.get("methods") if isinstance(extrapolate, dict) else None)
    if old:
        raise ConfigError(
            f"config extrapolate.methods: {old} ({_config_file('extrapolate.methods', files)})"
        )
    schema = Path(schema) if schema else root / "workflow" / "schemas" / "config.schema.yaml"
    given = config.get("regrounding")
    regrounding_keys = [k for k in given if k != "enabled"] if isinstance(given, dict) else []
    problems = schema_problems(config, schema)
    steps: list[int] = []
    if not problems:
        try:
            check_config(config, root)
            train = config["train"]
            steps = (
                existing_steps(train["existing"])
                if train["backend"] == "existing"
                else checkpoint_steps(train["steps"], train["save_every"])
            )
        except ValueError as err:
            problems.append(_key_and_problem(err))
        else:
            problems += meaning_problems(config, steps, regrounding_keys)
    if problems:
        raise ConfigError(
            "\n".join(
                f"config {key}: {message} ({_config_file(key, files)})" for key, message in problems
            )
        )
    return steps
