import _rlpredict  # noqa: F401
import pandas as pd

from rlpredict.atomic import atomic_write_text
from rlpredict.regrounding import (
    chain_curve,
    default_targets,
    regrounding_markdown,
    regrounding_table,
    standard_curve,
)
from rlpredict.tables import benchmark_seconds, load_eval, training_seconds
from rlpredict.workflow import run_script


def result(path):
    found = load_eval(path)
    return found["accuracy"], found["accuracy_stderr"]


def segment_seconds(path, m):
    seconds, _ = training_seconds(pd.read_csv(path), m)
    return seconds


def main(smk):
    steps = smk.params.steps
    standard = {s: result(p) for s, p in zip(steps, smk.input.standard, strict=True)}
    seconds, _ = training_seconds(pd.read_csv(smk.input.history), steps[-1])
    evaluated = [benchmark_seconds([p]) for p in smk.input.standard_benchmarks]
    rows = standard_curve(
        standard, seconds, steps[-1], dict(zip(steps[1:], evaluated, strict=True))
    )
    for name, chain in smk.params.chains.items():
        files = smk.params.files[name]
        rows += chain_curve(
            chain,
            standard[0],
            [result(p) for p in files["ends"]],
            [result(p) for p in files["extrapolated"]],
            [segment_seconds(p, chain[0].m) for p in files["histories"]],
            [benchmark_seconds([p]) for p in files["benchmarks"]],
            [
                (benchmark_seconds([end]), benchmark_seconds([extrap]))
                for end, extrap in zip(
                    files["end_eval_benchmarks"], files["extrap_eval_benchmarks"], strict=True
                )
            ],
        )
    curves = pd.DataFrame(rows)
    targets = smk.params.targets or default_targets(standard[0][0], standard[steps[-1]][0])
    table = regrounding_table(curves, targets)
    atomic_write_text(smk.output.csv, table.to_csv(index=False))
    atomic_write_text(smk.output.md, regrounding_markdown(table))


run_script(main, snakemake)  # noqa: F821
