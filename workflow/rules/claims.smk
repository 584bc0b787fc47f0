# The papers' headline claims checked against this run's tables: the paper's number, this
# run's number with its standard error, a verdict and the rule that decided it.

from rlpredict.claims import run_files

CLAIMS_ENABLED = {
    "ablate": config["ablate"]["enabled"],
    "sft": config["ablate"]["enabled"] and config["control"]["sft"]["enabled"],
    "extrapolate": bool(EXTRAP_JOBS),
    "linearity": config["linearity"]["enabled"],
    "regrounding": config["regrounding"]["enabled"],
}
# The tables and analysis files of the analyses this config enables.
CLAIMS_INPUTS = {
    name: str(path)
    for name, path in run_files(OUT, CLAIMS_ENABLED, STEPS[-1]).items()
    if path is not None
}


rule claims_table:
    input:
        **CLAIMS_INPUTS,
    output:
        csv=f"{OUT}/tables/claims.csv",
        md=f"{OUT}/tables/claims.md",
        html=report(
            f"{OUT}/tables/claims.html",
            caption="../report/claims_table.rst",
            category="Claims",
        ),
    log:
        f"{OUT}/logs/claims_table.log",
    benchmark:
        f"{OUT}/benchmarks/claims_table.tsv"
    conda:
        "../envs/analysis.yaml"
    params:
        run=RUN,
        enabled=CLAIMS_ENABLED,
        final_step=STEPS[-1],
    script:
        "../scripts/claims_table.py"
