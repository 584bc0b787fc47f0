# Predict the final model from an early window of checkpoints (weight extrapolation, ExPO,
# RELEX, AlphaRL, logits extrapolation), evaluate the predictions, and tabulate speedup
# versus accuracy. The jobs come from rlpredict.plan (methods × windows in config).
from dataclasses import asdict

from rlpredict.schedules import needs_lr_schedule, run_lr_schedule

# The lr schedule the run was trained with (rlpredict.schedules: TRL's, verl's or the
# existing run's), for the lr time axis; checked with the config (rlpredict.workflow).
LR_SCHEDULE = (
    asdict(run_lr_schedule(config, STEPS))
    if needs_lr_schedule(config["extrapolate"])
    else None
)


wildcard_constraints:
    method=r"[a-z0-9.-]+",
    window=r"[0-9.]+",
    target="oracle|forecast",


rule extrapolate_weights:
    input:
        unpack(job_inputs),
    output:
        model=generated_model(f"{OUT}/models/extrap/{{method}}/w{{window}}"),
    log:
        f"{OUT}/logs/extrapolate/{{method}}_w{{window}}.log",
    benchmark:
        f"{OUT}/benchmarks/extrapolate/{{method}}_w{{window}}.tsv"
    conda:
        "../envs/analysis.yaml"
    threads: 1
    params:
        job=lambda wildcards: job_of(f"extrap/{wildcards.method}/w{wildcards.window}"),
        settings=config["extrapolate"],
        lr_schedule=LR_SCHEDULE,
    script:
        "../scripts/extrapolate.py"


rule alpharl:
    input:
        unpack(job_inputs),
    output:
        model=generated_model(f"{OUT}/models/extrap/alpharl-{{target}}/w{{window}}"),
        fits=f"{OUT}/analysis/alpharl/{{target}}_w{{window}}.parquet",
    log:
        f"{OUT}/logs/extrapolate/alpharl-{{target}}_w{{window}}.log",
    benchmark:
        f"{OUT}/benchmarks/extrapolate/alpharl-{{target}}_w{{window}}.tsv"
    conda:
        "../envs/analysis.yaml"
    threads: 1
    params:
        job=lambda wildcards: job_of(
            f"extrap/alpharl-{wildcards.target}/w{wildcards.window}"
        ),
        settings=config["extrapolate"]["alpharl"],
    script:
        "../scripts/alpharl.py"


ruleorder: alpharl > extrapolate_weights


# Logits extrapolation runs through lm-eval with rlpredict's two-model HF backend on the
# run's own evaluation tasks and settings: on the CPU with eval.backend hf, on one GPU with
# eval.backend vllm (vLLM cannot mix two engines' logits; STACK.md).
if config["eval"]["backend"] == "vllm":
    LOGITS_INPUTS = EVAL_INPUTS
    LOGITS_PARAMS = {"max_gen_toks": EVAL["vllm"]["max_gen_toks"], "device": "cuda"}
    LOGITS_RESOURCES = {
        "nodes": 1,
        "gpu": 1,
        "gpu_model": EVAL_RESOURCES["gpu_model"],
        "mem_mb": EVAL_RESOURCES["mem_mb"],
        "runtime": EVAL_RESOURCES["runtime"],
        "cpus_per_gpu": EVAL_RESOURCES["cpus_per_gpu"],
    }
    LOGITS_THREADS = EVAL_RESOURCES["cpus_per_gpu"]
    LOGITS_ENV = "../envs/vllm-eval.yaml"
else:
    LOGITS_INPUTS = {"data": rules.make_data.output.test, "task": TASK_FILES}
    LOGITS_PARAMS = {
        "task_name": rules.evaluate.params.task_name,
        "max_gen_toks": rules.evaluate.params.max_gen_toks,
        "device": "cpu",
    }
    LOGITS_RESOURCES = {}
    LOGITS_THREADS = 1
    LOGITS_ENV = "../envs/cpu.yaml"


rule evaluate_logits:
    input:
        unpack(job_inputs),
        **LOGITS_INPUTS,
    output:
        f"{OUT}/eval/logits/w{{window}}.json",
    log:
        f"{OUT}/logs/evaluate/logits_w{{window}}.log",
    benchmark:
        f"{OUT}/benchmarks/evaluate/logits_w{{window}}.tsv"
    conda:
        LOGITS_ENV
    threads: LOGITS_THREADS
    resources:
        **LOGITS_RESOURCES,
    params:
        **LOGITS_PARAMS,
        job=lambda wildcards: job_of(f"logits/w{wildcards.window}"),
        settings=config["eval"],
        seed=config["seed"],
    script:
        "../scripts/evaluate_logits.py"


ruleorder: evaluate_logits > evaluate


rule speedup_table:
    input:
        evals=[eval_json(job.model_id) for job in EXTRAP_JOBS],
        stop=[eval_json(f"step_{job.steps[-1]}") for job in EXTRAP_JOBS],
        final=eval_json(f"step_{STEPS[-1]}"),
        base=eval_json("step_0"),
        history=rules.train_rl.output.history,
        cost_benchmarks=[f for job in EXTRAP_JOBS for f in job_cost_benchmarks(job)],
    output:
        csv=f"{OUT}/tables/speedup_vs_accuracy.csv",
        md=f"{OUT}/tables/speedup_vs_accuracy.md",
    log:
        f"{OUT}/logs/speedup_table.log",
    benchmark:
        f"{OUT}/benchmarks/speedup_table.tsv"
    conda:
        "../envs/analysis.yaml"
    params:
        jobs=PLANNED_JOBS,
        costs={job.model_id: job_cost_benchmarks(job) for job in EXTRAP_JOBS},
        final_step=STEPS[-1],
    script:
        "../scripts/speedup_table.py"


rule speedup_figures:
    input:
        table=rules.speedup_table.output.csv,
        steps=rules.accuracy_table.output.csv,
    output:
        accuracy_png=report(
            f"{OUT}/figures/predictions_vs_step.png",
            caption="../report/predictions_figure.rst",
            category="Extrapolation",
        ),
        accuracy_pdf=f"{OUT}/figures/predictions_vs_step.pdf",
        speedup_png=report(
            f"{OUT}/figures/speedup_vs_accuracy.png",
            caption="../report/speedup_figure.rst",
            category="Extrapolation",
        ),
        speedup_pdf=f"{OUT}/figures/speedup_vs_accuracy.pdf",
        table_html=report(
            f"{OUT}/tables/speedup_vs_accuracy.html",
            caption="../report/speedup_table.rst",
            category="Extrapolation",
        ),
    log:
        f"{OUT}/logs/speedup_figures.log",
    benchmark:
        f"{OUT}/benchmarks/speedup_figures.tsv"
    conda:
        "../envs/analysis.yaml"
    params:
        run=RUN,
    script:
        "../scripts/speedup_figures.py"
