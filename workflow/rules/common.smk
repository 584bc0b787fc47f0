# Paths, step lists and input functions shared by every rule.
import sys
from argparse import Namespace

sys.path.insert(0, str(Path(workflow.basedir) / "src"))

from rlpredict.workflow import checkpoint_steps, rank_argument, rank_tokens

RUN = config["run"]
OUT = f"results/{RUN}"
STEPS = checkpoint_steps(config["train"]["steps"], config["train"]["save_every"])
SOURCES = ["rl", "sft"] if config["control"]["sft"]["enabled"] else ["rl"]
RANKS = rank_tokens(config["ablate"]["ranks"], config["ablate"]["rank_percents"])


wildcard_constraints:
    step=r"\d+",
    model_id=r"[A-Za-z0-9_.=+-]+(/[A-Za-z0-9_.=+-]+)*",


def model_dir(wildcards):
    """``step_N`` is an RL checkpoint; any other model id names a dir under models/."""
    if wildcards.model_id.startswith("step_"):
        return f"{OUT}/checkpoints/{wildcards.model_id}"
    return f"{OUT}/models/{wildcards.model_id}"


def trained_id(source, step):
    """Model id of checkpoint ``step`` of the RL run or of the SFT control."""
    return f"step_{step}" if source == "rl" else f"sft/step_{step}"


def final_model_id(source):
    return trained_id(source, STEPS[-1])


def trained_dir(wildcards):
    return model_dir(Namespace(model_id=trained_id(wildcards.source, wildcards.step)))


def final_trained_dir(wildcards):
    return model_dir(Namespace(model_id=final_model_id(wildcards.source)))


def eval_json(model_id):
    return f"{OUT}/eval/{model_id}.json"


def all_outputs():
    outputs = [
        f"{OUT}/tables/accuracy_vs_step.csv",
        f"{OUT}/tables/accuracy_vs_step.md",
        f"{OUT}/figures/accuracy_vs_step.png",
        f"{OUT}/figures/accuracy_vs_step.pdf",
    ]
    if config["ablate"]["enabled"]:
        outputs += [
            f"{OUT}/tables/rank_ablation.csv",
            f"{OUT}/tables/rank_ablation.md",
            f"{OUT}/figures/rank_ablation.png",
            f"{OUT}/figures/rank1_energy_share.png",
        ]
    return outputs
