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
        "../envs/analysis.yaml"
    threads: 1
    params:
        steps=STEPS,
        settings=config["linearity"],
        seed=config["seed"],
    script:
        "../scripts/weight_linearity.py"


# Probe responses: the base (step 0) answers the task's own dev prompts, rendered as the
# evaluation renders them and as long as an evaluation response may be; every checkpoint then
# scores them. On the CPU with eval.backend hf, on one GPU with eval.backend vllm.
if config["eval"]["backend"] == "vllm":
    PROBE_PROMPTS = EVAL_DEV_INPUTS.get("dev") or rules.make_data.output.dev
    PROBE_PARAMS = {
        "chat": EVAL["vllm"]["apply_chat_template"],
        "max_new_tokens": EVAL["vllm"]["max_gen_toks"],
        "device": "cuda",
        "batch_size": 4,
    }
    PROBE_RESOURCES = {
        "nodes": 1,
        "gpu": 1,
        "gpu_model": EVAL_RESOURCES["gpu_model"],
        "mem_mb": EVAL_RESOURCES["mem_mb"],
        "runtime": EVAL_RESOURCES["runtime"],
        "cpus_per_gpu": EVAL_RESOURCES["cpus_per_gpu"],
    }
else:
    from rlpredict.tasks.prompts import is_chat_task

    PROBE_PROMPTS = rules.make_data.output.dev
    PROBE_PARAMS = {
        "chat": is_chat_task(rules.evaluate.params.task_name),
        "max_new_tokens": rules.evaluate.params.max_gen_toks,
        "device": "cpu",
        "batch_size": 16,
    }
    PROBE_RESOURCES = {}


rule logprob_linearity:
    input:
        checkpoints=[f"{OUT}/checkpoints/step_{step}" for step in STEPS],
        dev=PROBE_PROMPTS,
    output:
        probes=f"{OUT}/analysis/linearity/probes.jsonl",
        table=f"{OUT}/analysis/linearity/logprobs.parquet",
        summary=f"{OUT}/analysis/linearity/logprobs.json",
    log:
        f"{OUT}/logs/logprob_linearity.log",
    benchmark:
        f"{OUT}/benchmarks/logprob_linearity.tsv"
    conda:
        "../envs/analysis.yaml"
    threads: 1
    resources:
        **PROBE_RESOURCES,
    params:
        **PROBE_PARAMS,
        steps=STEPS,
        settings=config["linearity"],
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
        "../envs/analysis.yaml"
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
        "../envs/analysis.yaml"
    params:
        run=RUN,
    script:
        "../scripts/linearity_report.py"
