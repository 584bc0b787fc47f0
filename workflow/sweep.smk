# The regime sweep: one run of the main workflow per (setting, seed) of config/sweep.yaml,
# each a Snakemake module with its own config (validated against the main schema, defaults
# filled in, outputs in results/sweep-{setting}-s{seed}/), then one table and one figure
# across all runs in results/sweep/. Never part of `make run` or CI:
#   snakemake -s workflow/sweep.smk --configfile config/sweep.yaml --cores all
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(workflow.basedir).parent / "src"))

from snakemake.exceptions import WorkflowError

from rlpredict.methods import old_methods_problem
from rlpredict.sweep import describe_overrides, expand_sweep, load_schema, run_tables

# No `configfile:` default: Snakemake would merge it with --configfile, settings included.
SWEEP_FILES = ", ".join(os.path.relpath(f) for f in workflow.overwrite_configfiles)
EXTRAPOLATE = config.get("extrapolate")
try:
    OLD_METHODS = old_methods_problem(
        EXTRAPOLATE.get("methods") if isinstance(EXTRAPOLATE, dict) else None
    )
    if OLD_METHODS:
        raise ValueError(
            f"extrapolate.methods: {OLD_METHODS} ({SWEEP_FILES or '--config'})"
        )
    SWEEP_RUNS = expand_sweep(
        config, load_schema(Path(workflow.basedir) / "schemas" / "config.schema.yaml")
    )
except ValueError as err:
    raise WorkflowError(f"sweep config: {err}") from None

SWEEP_OUT = "results/sweep"


report: "report/sweep.rst"


for sweep_run in SWEEP_RUNS:
    run_module = sweep_run.module
    rule_prefix = f"{sweep_run.module}_"

    module:
        name: run_module
        snakefile:
            "Snakefile"
        config:
            sweep_run.config

    use rule * from run_module as rule_prefix*


# Every table and figure each run's own `all` asks for.
RUN_OUTPUTS = {r.run: globals()[r.module].all_outputs() for r in SWEEP_RUNS}


rule all:
    default_target: True
    input:
        f"{SWEEP_OUT}/tables/regime_sweep.csv",
        f"{SWEEP_OUT}/tables/regime_sweep_summary.csv",
        f"{SWEEP_OUT}/tables/regime_sweep.md",
        f"{SWEEP_OUT}/figures/regime_sweep.png",
        f"{SWEEP_OUT}/figures/regime_sweep.pdf",


rule regime_sweep_table:
    input:
        runs=[path for outputs in RUN_OUTPUTS.values() for path in outputs],
    output:
        csv=f"{SWEEP_OUT}/tables/regime_sweep.csv",
        summary=f"{SWEEP_OUT}/tables/regime_sweep_summary.csv",
        md=f"{SWEEP_OUT}/tables/regime_sweep.md",
    log:
        f"{SWEEP_OUT}/logs/regime_sweep_table.log",
    conda:
        "envs/analysis.yaml"
    params:
        runs=[
            {
                "setting": sweep_run.setting,
                "seed": sweep_run.seed,
                "run": sweep_run.run,
                "overrides": describe_overrides(sweep_run.overrides),
                "tables": run_tables(sweep_run.run, RUN_OUTPUTS[sweep_run.run]),
            }
            for sweep_run in SWEEP_RUNS
        ],
    script:
        "scripts/sweep_table.py"


rule regime_sweep_figure:
    input:
        table=rules.regime_sweep_table.output.csv,
        summary=rules.regime_sweep_table.output.summary,
    output:
        png=report(
            f"{SWEEP_OUT}/figures/regime_sweep.png",
            caption="report/sweep_figure.rst",
            category="Regime sweep",
        ),
        pdf=f"{SWEEP_OUT}/figures/regime_sweep.pdf",
        table_html=report(
            f"{SWEEP_OUT}/tables/regime_sweep.html",
            caption="report/sweep_table.rst",
            category="Regime sweep",
        ),
    log:
        f"{SWEEP_OUT}/logs/regime_sweep_figure.log",
    conda:
        "envs/analysis.yaml"
    params:
        window=config["sweep"].get("figure_window", 0.4),
    script:
        "scripts/sweep_figure.py"
