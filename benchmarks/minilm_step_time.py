"""Step time of EP against backprop on the MiniLM fine-tuning demo (``examples/finetune_minilm.py``), full and LoRA.

    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/minilm_step_time.py [--order bp_first|ep_first] [--repeats 12]

One batch of 32 training passages (max_length 48), the demo's settings (EP: positive nudging, β = 0.01, one sweep),
both models in train mode with MiniLM's dropout on. Each timed step is the Trainer's ``training_step`` plus its
AdamW step, EP and backprop interleaved in one process (``benchmarks/step_time.py``'s ``time_steps``); medians.
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer, Trainer, TrainingArguments, set_seed

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "examples"), str(ROOT / "benchmarks")]

from finetune_minilm import PLAYS, play_passages  # noqa: E402
from step_time import BenchmarkArguments, time_steps  # noqa: E402

from mep_hf import EPTrainer, EPTrainingArguments  # noqa: E402
from mep_hf.data import find_minilm  # noqa: E402


def main(argv=None) -> dict[str, float]:
    parser = argparse.ArgumentParser()
    parser.add_argument("--order", choices=["bp_first", "ep_first"], default="bp_first")
    parser.add_argument("--repeats", type=int, default=12)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    path = find_minilm()
    tokenizer = AutoTokenizer.from_pretrained(path)
    rows = play_passages(2)["train"].shuffle(seed=0)[:32]
    batch = dict(tokenizer(rows["text"], truncation=True, max_length=48, padding=True, return_tensors="pt"))
    batch["labels"] = torch.tensor(rows["labels"])
    bench = BenchmarkArguments(repeats=args.repeats, warmup=3, budget_steps=100)
    common = dict(per_device_train_batch_size=32, learning_rate=1e-4, max_steps=100, report_to="none", use_cpu=True,
                  save_strategy="no", disable_tqdm=True)
    ratios = {}
    for lora in (False, True):
        set_seed(0)
        model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=len(PLAYS))
        if lora:
            from peft import LoraConfig, TaskType, get_peft_model

            model = get_peft_model(model, LoraConfig(task_type=TaskType.SEQ_CLS, r=8, lora_alpha=16, lora_dropout=0.0,
                                                     target_modules=["query", "value"]))
        ep = EPTrainer(model=copy.deepcopy(model), args=EPTrainingArguments(
            output_dir="runs/minilm_step_time/ep", **common))  # the library's defaults
        bp = Trainer(model=copy.deepcopy(model), args=TrainingArguments(output_dir="runs/minilm_step_time/bp", **common))
        trainers = {"backprop": bp, "ep": ep} if args.order == "bp_first" else {"ep": ep, "backprop": bp}
        step = time_steps(trainers, batch, bench)
        name = "lora" if lora else "full"
        ratios[name] = step["ep"] / step["backprop"]
        print(f"{name}: EP {step['ep'] * 1e3:.0f} ms, backprop {step['backprop'] * 1e3:.0f} ms, "
              f"ratio {ratios[name]:.2f}", flush=True)
    return ratios


if __name__ == "__main__":
    main(sys.argv[1:])
