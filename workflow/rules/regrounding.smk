# Periodic re-grounding (RL-Extra): per (M, N) chain, segment k trains M real RL steps from
# the previous segment's extrapolated model (the base for k = 1), then extrapolates N steps
# further (two-point, α = (M + N) / M). Every segment end and extrapolated model is
# evaluated; tables/regrounding.* compares them with standard RL against real RL steps.
# Chains are keyed by (M, N): models/regrounding/m{M}_n{N}/seg{k}/{end,extrap}. A finished
# segment is never trained again, so an interrupted chain resumes after its last finished
# segment (and inside a segment from the newest checkpoint TRL or verl left in
# regrounding_state/, deleted once the segment is finished). A segment's end model is
# deleted once extrapolated and evaluated (unless keep_generated_models); its extrapolated
# model, where the next segment starts, is kept.
from rlpredict.regrounding import chain_real_steps, verl_segment_config
from rlpredict.workflow import regrounding_backend_problem, regrounding_chains

REGROUNDING = config["regrounding"]
# Checked with the config when enabled or when the config sets a regrounding key; otherwise
# only `snakemake regrounding` needs them, and stops on their problem (regrounding_inputs).
try:
    CHAINS = regrounding_chains(config)
    CHAINS_PROBLEM = None
except ValueError as err:
    CHAINS, CHAINS_PROBLEM = {}, f"config {err}"
_problem = regrounding_backend_problem(config, CHAINS)
if _problem and not CHAINS_PROBLEM:
    CHAINS, CHAINS_PROBLEM = {}, f"config {_problem[0]}: {_problem[1]}"
KEEP_OPTIMIZER = REGROUNDING["optimizer"] == "keep"


wildcard_constraints:
    chain=r"m\d+_n\d+",
    seg=r"\d+",


if config["train"]["backend"] == "trl":

    rule regrounding_train:
        input:
            unpack(segment_train_inputs),
        output:
            **(
                {
                    "optimizer": f"{OUT}/regrounding_state/{{chain}}/seg{{seg}}.optimizer.pt"
                }
                if KEEP_OPTIMIZER
                else {}
            ),
            model=generated_model(segment_dir("{chain}", "{seg}", "end")),
            history=f"{OUT}/analysis/regrounding/{{chain}}/seg{{seg}}_history.csv",
        log:
            f"{OUT}/logs/regrounding/{{chain}}/train_seg{{seg}}.log",
        benchmark:
            f"{OUT}/benchmarks/regrounding/{{chain}}/train_seg{{seg}}.tsv"
        conda:
            "../envs/cpu.yaml"
        threads: 1
        params:
            segment=segment_of,
            chain_steps=lambda wildcards: chain_real_steps(CHAINS[wildcards.chain]),
            train=config["train"],
            state_dir=lambda wildcards: f"{OUT}/regrounding_state/{wildcards.chain}/seg{wildcards.seg}",
            task_name=TASK_NAME,
            seed=config["seed"],
        script:
            "../scripts/regrounding_train.py"

elif config["train"]["backend"] == "verl":

    # Each segment is a fresh verl run (the authors' script) from the segment's start model.
    # Its verl dir is not an output, so that a rerun after an interruption resumes it; it is
    # deleted once the segment's end model is converted.
    rule regrounding_train:
        input:
            **VERL_DATA,
            start=segment_start,
        output:
            model=generated_model(segment_dir("{chain}", "{seg}", "end")),
            history=f"{OUT}/analysis/regrounding/{{chain}}/seg{{seg}}_history.csv",
        log:
            f"{OUT}/logs/regrounding/{{chain}}/train_seg{{seg}}.log",
        benchmark:
            f"{OUT}/benchmarks/regrounding/{{chain}}/train_seg{{seg}}.tsv"
        conda:
            "../envs/verl.yaml"
        threads: train_gpus(config) * TRAIN_RESOURCES["cpus_per_gpu"]
        resources:
            nodes=1,
            gpu=train_gpus(config),
            gpu_model=TRAIN_RESOURCES["gpu_model"],
            mem_mb=TRAIN_RESOURCES["mem_mb"],
            runtime=TRAIN_RESOURCES["runtime"],
            cpus_per_gpu=TRAIN_RESOURCES["cpus_per_gpu"],
        params:
            segment=segment_of,
            config=lambda wildcards: verl_segment_config(
                config,
                segment_of(wildcards),
                chain_real_steps(CHAINS[wildcards.chain]),
            ),
            verl_dir=lambda wildcards: f"{OUT}/regrounding_state/{wildcards.chain}/seg{wildcards.seg}",
        script:
            "../scripts/regrounding_train_verl.py"


rule regrounding_extrapolate:
    input:
        start=segment_start,
        end=segment_dir("{chain}", "{seg}", "end"),
    output:
        model=directory(segment_dir("{chain}", "{seg}", "extrap")),
    log:
        f"{OUT}/logs/regrounding/{{chain}}/extrapolate_seg{{seg}}.log",
    benchmark:
        f"{OUT}/benchmarks/regrounding/{{chain}}/extrapolate_seg{{seg}}.tsv"
    conda:
        "../envs/analysis.yaml"
    threads: 1
    params:
        segment=segment_of,
    script:
        "../scripts/regrounding_extrapolate.py"


REGROUNDING_FILES = {name: chain_files(name) for name in CHAINS}


rule regrounding_table:
    input:
        standard=[eval_json(f"step_{step}") for step in STEPS],
        standard_benchmarks=[
            f"{OUT}/benchmarks/evaluate/step_{step}.tsv" for step in STEPS[1:]
        ],
        history=rules.train_rl.output.history,
        chains=regrounding_inputs,
    output:
        csv=f"{OUT}/tables/regrounding.csv",
        md=f"{OUT}/tables/regrounding.md",
    log:
        f"{OUT}/logs/regrounding_table.log",
    benchmark:
        f"{OUT}/benchmarks/regrounding_table.tsv"
    conda:
        "../envs/analysis.yaml"
    params:
        steps=STEPS,
        chains=CHAINS,
        files=REGROUNDING_FILES,
        targets=REGROUNDING["targets"],
    script:
        "../scripts/regrounding_table.py"


rule regrounding_figure:
    input:
        table=rules.regrounding_table.output.csv,
    output:
        png=report(
            f"{OUT}/figures/regrounding.png",
            caption="../report/regrounding_figure.rst",
            category="Re-grounding",
        ),
        pdf=f"{OUT}/figures/regrounding.pdf",
        table_html=report(
            f"{OUT}/tables/regrounding.html",
            caption="../report/regrounding_table.rst",
            category="Re-grounding",
        ),
    log:
        f"{OUT}/logs/regrounding_figure.log",
    benchmark:
        f"{OUT}/benchmarks/regrounding_figure.tsv"
    conda:
        "../envs/analysis.yaml"
    params:
        run=RUN,
        eval_settings=config["eval"],
    script:
        "../scripts/regrounding_figure.py"


rule regrounding:
    input:
        rules.regrounding_table.output.csv,
        rules.regrounding_table.output.md,
        rules.regrounding_figure.output.png,
        rules.regrounding_figure.output.table_html,
