"""Step time of EP against backprop on the same model and batch, in one process, interleaved.

    python benchmarks/step_time.py                       # MLP 784-512-512-10, conv net, char transformer
    python benchmarks/step_time.py --models mlp --repeats 50
    python benchmarks/step_time.py --models llama --batch_size 8 --threads 1   # stock LlamaForCausalLM, adapted
    (models: mlp, convnet, char_transformer; stock llama, qwen2, gpt2, bert, roberta, vit on random batches)
    python benchmarks/step_time.py --use_cpu false       # on a CUDA GPU (fused Triton kernels for dense blocks)

EP runs at the library's defaults (``EPTrainingArguments()``) unless ``--ep_*`` flags say otherwise.
For each model: a plain ``Trainer`` (backprop) and an ``EPTrainer`` start from the same weights; each timed step
is the Trainer's own ``training_step`` plus its optimizer step, alternating EP and backprop so that load on the
machine hits both alike; the median of ``--repeats`` is reported as ``ratio = EP / backprop``. Then both train for
``--budget_steps`` steps and are tested, so speed is never bought with accuracy. The last line is the MLP ratio.
"""

from __future__ import annotations

import copy
import json
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from transformers import HfArgumentParser, Trainer, TrainingArguments, set_seed

from mep_hf import (
    EPConvNetConfig,
    EPConvNetForImageClassification,
    EPMLPConfig,
    EPMLPForImageClassification,
    EPTrainer,
    EPTrainingArguments,
)
from mep_hf.data import load_mnist


@dataclass
class BenchmarkArguments:
    models: list[str] = field(
        default_factory=lambda: ["mlp", "convnet", "char_transformer"], metadata={"help": "Models to time."}
    )
    threads: int | None = field(default=None, metadata={"help": "torch intra-op threads (default: torch's)."})
    use_cpu: bool = field(default=True, metadata={"help": "False: run on the accelerator (CUDA) when there is one."})
    batch_size: int = 128
    repeats: int = field(default=30, metadata={"help": "Timed steps per method (median reported)."})
    warmup: int = 5
    budget_steps: int = field(default=400, metadata={"help": "Training steps for the accuracy check."})
    output_dir: str = "runs/step_time"
    # The library's defaults (EPTrainingArguments()), unless set.
    ep_beta: float | None = None
    ep_nudging: str | None = None
    ep_settle_steps: int = 1
    learning_rate: float = 1e-3
    seed: int = 0


def mlp() -> torch.nn.Module:
    return EPMLPForImageClassification(EPMLPConfig(hidden_sizes=[512, 512], num_labels=10))


def convnet() -> torch.nn.Module:
    config = EPConvNetConfig(num_channels=1, image_size=28, channels=[16, 32], num_labels=10)
    return EPConvNetForImageClassification(config)


def char_transformer() -> torch.nn.Module:
    """The char-LM of examples/train_char_lm.py (d=64, 3 blocks, context 64); its budget run lives there."""
    from mep_hf.models import EPCharTransformerConfig, EPCharTransformerForCausalLM

    config = EPCharTransformerConfig(
        vocab_size=96, max_position_embeddings=64, hidden_size=64, num_hidden_layers=3, num_attention_heads=4
    )
    return EPCharTransformerForCausalLM(config)


# Stock transformers models of a few million parameters (d=256, 4 layers, vocab 2048, context 128), trained by EP
# through the adapters (mep_hf.adapters); what ``benchmarks/defaults.py`` checks the library defaults on.
STOCK = dict(vocab_size=2048, hidden_size=256, intermediate_size=704, num_hidden_layers=4, num_attention_heads=8)


def llama() -> torch.nn.Module:
    """A stock ``LlamaForCausalLM`` (8 heads / 4 key-value heads, SwiGLU 704)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    return LlamaForCausalLM(LlamaConfig(**STOCK, num_key_value_heads=4, max_position_embeddings=128))


def qwen2() -> torch.nn.Module:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    return Qwen2ForCausalLM(Qwen2Config(**STOCK, num_key_value_heads=4, max_position_embeddings=128))


def gpt2() -> torch.nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel

    return GPT2LMHeadModel(GPT2Config(vocab_size=2048, n_embd=256, n_layer=4, n_head=8, n_inner=704, n_positions=128))


def bert() -> torch.nn.Module:
    """A stock ``BertForSequenceClassification`` (2 labels); dropout on, as Hugging Face ships it."""
    from transformers import BertConfig, BertForSequenceClassification

    return BertForSequenceClassification(BertConfig(**STOCK, max_position_embeddings=128, num_labels=2))


def roberta() -> torch.nn.Module:
    from transformers import RobertaConfig, RobertaForSequenceClassification

    return RobertaForSequenceClassification(RobertaConfig(**STOCK, max_position_embeddings=130, num_labels=2))


def vit() -> torch.nn.Module:
    """A stock ``ViTForImageClassification`` on 32x32 RGB images, 4x4 patches, 10 labels."""
    from transformers import ViTConfig, ViTForImageClassification

    config = ViTConfig(hidden_size=256, intermediate_size=704, num_hidden_layers=4, num_attention_heads=8,
                       image_size=32, patch_size=4, num_channels=3, num_labels=10)
    return ViTForImageClassification(config)


MODELS: dict[str, Callable[[], torch.nn.Module]] = {
    "mlp": mlp, "convnet": convnet, "char_transformer": char_transformer, "llama": llama, "qwen2": qwen2,
    "gpt2": gpt2, "bert": bert, "roberta": roberta, "vit": vit,
}
LM_SHAPES = {"char_transformer": (96, 64), "llama": (2048, 128), "qwen2": (2048, 128), "gpt2": (2048, 128)}
SEQUENCE_CLASSIFIERS = {"bert": (2048, 128, 2), "roberta": (2048, 128, 2)}  # (vocabulary, length, labels)
MNIST_MODELS = ("mlp", "convnet")


def synthetic_batch(name: str, batch_size: int, seed: int) -> dict[str, torch.Tensor]:
    """A batch of random inputs with labels for the models that do not read MNIST (their step time and gradient do
    not depend on what the data mean)."""
    g = torch.Generator().manual_seed(seed)
    if name in LM_SHAPES:
        vocab, length = LM_SHAPES[name]
        ids = torch.randint(0, vocab, (batch_size, length), generator=g)
        return {"input_ids": ids, "labels": ids.clone()}
    if name in SEQUENCE_CLASSIFIERS:
        vocab, length, labels = SEQUENCE_CLASSIFIERS[name]
        ids = torch.randint(4, vocab, (batch_size, length), generator=g)
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids),
                "labels": torch.randint(0, labels, (batch_size,), generator=g)}
    if name == "vit":
        return {"pixel_values": torch.rand(batch_size, 3, 32, 32, generator=g),
                "labels": torch.randint(0, 10, (batch_size,), generator=g)}
    raise ValueError(f"{name} trains on MNIST; it has no synthetic batch")


def accuracy(eval_pred) -> dict[str, float]:
    logits, labels = eval_pred
    return {"accuracy": float((np.argmax(logits, axis=-1) == labels).mean())}


def make_trainers(bench: BenchmarkArguments, model: torch.nn.Module, data, out: Path):
    common = dict(
        per_device_train_batch_size=bench.batch_size,
        per_device_eval_batch_size=1000,
        learning_rate=bench.learning_rate,
        max_steps=bench.budget_steps,
        lr_scheduler_type="constant",
        save_strategy="no",
        report_to="none",
        use_cpu=bench.use_cpu,
        seed=bench.seed,
        disable_tqdm=True,
        logging_steps=10**9,
    )
    backprop = Trainer(
        model=copy.deepcopy(model),
        args=TrainingArguments(output_dir=str(out / "backprop"), **common),
        train_dataset=data["train"],
        compute_metrics=accuracy,
    )
    ep_args = EPTrainingArguments(
        output_dir=str(out / "ep"),
        ep_beta=bench.ep_beta,
        ep_nudging=bench.ep_nudging,
        ep_settle_steps=bench.ep_settle_steps,
        **common,
    )
    ep = EPTrainer(model=copy.deepcopy(model), args=ep_args, train_dataset=data["train"], compute_metrics=accuracy)
    return {"backprop": backprop, "ep": ep}


def time_steps(trainers: dict, batch: dict, bench: BenchmarkArguments) -> dict[str, float]:
    """Median seconds of training_step + optimizer step, the methods interleaved step by step."""
    for trainer in trainers.values():
        trainer.create_optimizer_and_scheduler(num_training_steps=bench.budget_steps)
        trainer.current_gradient_accumulation_steps = 1  # set by Trainer.train(); read by training_step
    times = {name: [] for name in trainers}
    sync = torch.cuda.synchronize if not bench.use_cpu and torch.cuda.is_available() else lambda: None
    for i in range(bench.warmup + bench.repeats):
        for name, trainer in trainers.items():
            sync()
            start = time.perf_counter()
            trainer.training_step(trainer.model, dict(batch))
            trainer.optimizer.step()
            trainer.optimizer.zero_grad()
            sync()  # GPU work is asynchronous: the step ends when the device is done
            if i >= bench.warmup:
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def main(argv: list[str] | None = None) -> dict:
    (bench,) = HfArgumentParser(BenchmarkArguments).parse_args_into_dataclasses(args=argv)
    if bench.threads:
        torch.set_num_threads(bench.threads)
    out = Path(bench.output_dir)
    data = load_mnist()
    results = {}
    for name in bench.models:
        set_seed(bench.seed)
        model = MODELS[name]()
        is_lm = name not in MNIST_MODELS
        batch = synthetic_batch(name, bench.batch_size, bench.seed) if is_lm else data["train"][: bench.batch_size]
        step = time_steps(make_trainers(bench, model, data, out / name / "timing"), batch, bench)
        row = {"ep_step_ms": 1e3 * step["ep"], "backprop_step_ms": 1e3 * step["backprop"]}
        row["ratio"] = step["ep"] / step["backprop"]
        if is_lm:  # accuracy budgets: examples/train_char_lm.py, examples/finetune_minilm.py; gradients: defaults.py
            row["ep_test_accuracy"] = row["backprop_test_accuracy"] = float("nan")
        else:
            for method, trainer in make_trainers(bench, model, data, out / name / "budget").items():
                trainer.train()
                row[f"{method}_test_accuracy"] = trainer.evaluate(data["test"])["eval_accuracy"]
        results[name] = row
        print(json.dumps({name: row}), flush=True)
    out.mkdir(parents=True, exist_ok=True)
    (out / "step_time.json").write_text(json.dumps({"args": vars(bench), "results": results}, indent=2))
    device = "cpu" if bench.use_cpu or not torch.cuda.is_available() else torch.cuda.get_device_name()
    print(f"device={device} threads={torch.get_num_threads()} batch={bench.batch_size} budget={bench.budget_steps} steps")
    print("| model | EP step (ms) | backprop step (ms) | ratio EP/backprop | EP test acc | backprop test acc |")
    print("|---|---|---|---|---|---|")
    for name, r in results.items():
        print(
            f"| {name} | {r['ep_step_ms']:.2f} | {r['backprop_step_ms']:.2f} | {r['ratio']:.2f} | "
            f"{r['ep_test_accuracy']:.4f} | {r['backprop_test_accuracy']:.4f} |"
        )
    if "mlp" in results:
        print(f"mlp ratio = EP / backprop = {results['mlp']['ratio']:.2f}")
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
