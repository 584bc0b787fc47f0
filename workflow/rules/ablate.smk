# ΔW spectra and rank-k ablation (AlphaRL's Rank-1 Dominance), for the RL run and the SFT
# control. {source} is "rl" or "sft"; {rank} is K, Kpct (K % of min(m, n)) or "full".


wildcard_constraints:
    source="rl|sft",
    rank=r"\d+|\d+pct|full",


rule spectrum:
    input:
        base=rules.base_model.output.model,
        checkpoint=trained_dir,
    output:
        f"{OUT}/analysis/spectrum/{{source}}/step_{{step}}.parquet",
    log:
        f"{OUT}/logs/spectrum/{{source}}_step_{{step}}.log",
    benchmark:
        f"{OUT}/benchmarks/spectrum/{{source}}_step_{{step}}.tsv"
    conda:
        "../envs/analysis.yaml"
    threads: 1
    params:
        k=config["ablate"]["spectrum_k"],
        modules=config["ablate"]["modules"],
    script:
        "../scripts/spectrum.py"


rule ablate:
    input:
        base=rules.base_model.output.model,
        checkpoint=final_trained_dir,
    output:
        model=generated_model(f"{OUT}/models/ablate/{{source}}/rank{{rank}}"),
        stats=f"{OUT}/analysis/ablate/{{source}}_rank{{rank}}.json",
    log:
        f"{OUT}/logs/ablate/{{source}}_rank{{rank}}.log",
    benchmark:
        f"{OUT}/benchmarks/ablate/{{source}}_rank{{rank}}.tsv"
    conda:
        "../envs/analysis.yaml"
    threads: 1
    params:
        rank=lambda wildcards: rank_argument(wildcards.rank),
        scale=config["ablate"]["scale"],
        lam=config["ablate"]["lam"],
        modules=config["ablate"]["modules"],
    script:
        "../scripts/ablate.py"


rule rank_ablation_table:
    input:
        evals=[
            eval_json(f"ablate/{source}/rank{rank}")
            for source in SOURCES
            for rank in RANKS
        ],
        finals=[eval_json(final_model_id(source)) for source in SOURCES],
        base=eval_json("step_0"),
        stats=[
            f"{OUT}/analysis/ablate/{source}_rank{rank}.json"
            for source in SOURCES
            for rank in RANKS
        ],
    output:
        csv=f"{OUT}/tables/rank_ablation.csv",
        md=f"{OUT}/tables/rank_ablation.md",
    log:
        f"{OUT}/logs/rank_ablation_table.log",
    benchmark:
        f"{OUT}/benchmarks/rank_ablation_table.tsv"
    conda:
        "../envs/analysis.yaml"
    params:
        sources=SOURCES,
        ranks=RANKS,
    script:
        "../scripts/rank_ablation_table.py"


rule rank_ablation_figures:
    input:
        table=rules.rank_ablation_table.output.csv,
        spectra=[
            f"{OUT}/analysis/spectrum/{source}/step_{step}.parquet"
            for source in SOURCES
            for step in STEPS[1:]
        ],
    output:
        rank_png=report(
            f"{OUT}/figures/rank_ablation.png",
            caption="../report/rank_ablation_figure.rst",
            category="Rank-1 dominance",
        ),
        rank_pdf=f"{OUT}/figures/rank_ablation.pdf",
        energy_png=report(
            f"{OUT}/figures/rank1_energy_share.png",
            caption="../report/energy_share_figure.rst",
            category="Rank-1 dominance",
        ),
        energy_pdf=f"{OUT}/figures/rank1_energy_share.pdf",
        table_html=report(
            f"{OUT}/tables/rank_ablation.html",
            caption="../report/rank_ablation_table.rst",
            category="Rank-1 dominance",
        ),
    log:
        f"{OUT}/logs/rank_ablation_figures.log",
    benchmark:
        f"{OUT}/benchmarks/rank_ablation_figures.tsv"
    conda:
        "../envs/analysis.yaml"
    params:
        run=RUN,
    script:
        "../scripts/rank_ablation_figures.py"
