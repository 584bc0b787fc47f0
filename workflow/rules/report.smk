rule accuracy_table:
    input:
        evals=[eval_json(f"step_{step}") for step in STEPS],
    output:
        csv=f"{OUT}/tables/accuracy_vs_step.csv",
        md=f"{OUT}/tables/accuracy_vs_step.md",
    log:
        f"{OUT}/logs/accuracy_table.log",
    benchmark:
        f"{OUT}/benchmarks/accuracy_table.tsv"
    conda:
        "../envs/analysis.yaml"
    params:
        steps=STEPS,
    script:
        "../scripts/accuracy_table.py"


rule accuracy_figure:
    input:
        table=rules.accuracy_table.output.csv,
        history=rules.train_rl.output.history,
    output:
        png=report(
            f"{OUT}/figures/accuracy_vs_step.png",
            caption="../report/accuracy_figure.rst",
            category="Training",
        ),
        pdf=f"{OUT}/figures/accuracy_vs_step.pdf",
        table_html=report(
            f"{OUT}/tables/accuracy_vs_step.html",
            caption="../report/accuracy_table.rst",
            category="Training",
        ),
    log:
        f"{OUT}/logs/accuracy_figure.log",
    benchmark:
        f"{OUT}/benchmarks/accuracy_figure.tsv"
    conda:
        "../envs/analysis.yaml"
    params:
        run=RUN,
        eval_settings=config["eval"],
    script:
        "../scripts/accuracy_figure.py"
