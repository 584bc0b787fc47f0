# Paths, step lists and input functions shared by every rule.
import sys

sys.path.insert(0, str(Path(workflow.basedir) / "src"))

from rlpredict.workflow import checkpoint_steps


RUN = config["run"]
OUT = f"results/{RUN}"
STEPS = checkpoint_steps(config["train"]["steps"], config["train"]["save_every"])


wildcard_constraints:
    step=r"\d+",
    model_id=r"[A-Za-z0-9_.=+-]+(/[A-Za-z0-9_.=+-]+)*",


def model_dir(wildcards):
    """``step_N`` is an RL checkpoint; any other model id names a dir under models/."""
    if wildcards.model_id.startswith("step_"):
        return f"{OUT}/checkpoints/{wildcards.model_id}"
    return f"{OUT}/models/{wildcards.model_id}"


def eval_json(model_id):
    return f"{OUT}/eval/{model_id}.json"


def all_outputs():
    return [
        f"{OUT}/tables/accuracy_vs_step.csv",
        f"{OUT}/tables/accuracy_vs_step.md",
        f"{OUT}/figures/accuracy_vs_step.png",
        f"{OUT}/figures/accuracy_vs_step.pdf",
    ]
