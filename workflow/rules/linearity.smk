# Why extrapolation works (or does not): linearity of weights, token log-probs and rank-1
# trajectories along the RL run (RLVR-linearity paper §3, AlphaRL Fig. 15).


rule weight_linearity:
    input:
        checkpoints=[f"{OUT}/checkpoints/step_{step}" for step in STEPS],
    output:
        table=f"{OUT}/analysis/linearity/weights.parquet",
        summary=f"{OUT}/analysis/linearity/weights.json",
    log:
        f"{OUT}/logs/weight_linearity.log",
    benchmark:
        f"{OUT}/benchmarks/weight_linearity.tsv"
    conda:
        "../../envs/analysis.yaml"
    threads: 1
    params:
        steps=STEPS,
        settings=config["linearity"],
        seed=config["seed"],
    script:
        "../scripts/weight_linearity.py"


rule logprob_linearity:
    input:
        checkpoints=[f"{OUT}/checkpoints/step_{step}" for step in STEPS],
        dev=rules.make_data.output.dev,
    output:
        probes=f"{OUT}/analysis/linearity/probes.jsonl",
        table=f"{OUT}/analysis/linearity/logprobs.parquet",
        summary=f"{OUT}/analysis/linearity/logprobs.json",
    log:
        f"{OUT}/logs/logprob_linearity.log",
    benchmark:
        f"{OUT}/benchmarks/logprob_linearity.tsv"
    conda:
        "../../envs/analysis.yaml"
    threads: 1
    params:
        steps=STEPS,
        settings=config["linearity"],
        max_new_tokens=config["task"]["digits"] + 2,
        seed=config["seed"],
    script:
        "../scripts/logprob_linearity.py"


rule rank1_linearity:
    input:
        checkpoints=[f"{OUT}/checkpoints/step_{step}" for step in STEPS],
        dev=[f"{OUT}/eval_dev/step_{step}.json" for step in STEPS],
    output:
        f"{OUT}/analysis/linearity/rank1_r2.parquet",
    log:
        f"{OUT}/logs/rank1_linearity.log",
    benchmark:
        f"{OUT}/benchmarks/rank1_linearity.tsv"
    conda:
        "../../envs/analysis.yaml"
    threads: 1
    params:
        steps=STEPS,
        settings=config["extrapolate"]["alpharl"],
    script:
        "../scripts/rank1_linearity.py"


rule linearity_report:
    input:
        weights=rules.weight_linearity.output.table,
        weights_summary=rules.weight_linearity.output.summary,
        logprobs=rules.logprob_linearity.output.table,
        logprobs_summary=rules.logprob_linearity.output.summary,
        rank1=rules.rank1_linearity.output[0],
    output:
        csv=f"{OUT}/tables/linearity.csv",
        md=f"{OUT}/tables/linearity.md",
        html=report(
            f"{OUT}/tables/linearity.html",
            caption="../report/linearity_table.rst",
            category="Linearity",
        ),
        png=report(
            f"{OUT}/figures/linearity.png",
            caption="../report/linearity_figure.rst",
            category="Linearity",
        ),
        pdf=f"{OUT}/figures/linearity.pdf",
    log:
        f"{OUT}/logs/linearity_report.log",
    benchmark:
        f"{OUT}/benchmarks/linearity_report.tsv"
    conda:
        "../../envs/analysis.yaml"
    params:
        run=RUN,
    script:
        "../scripts/linearity_report.py"
