"""Train an MLP on MNIST by EP in a plain PyTorch loop: ``mep_hf.ep_backward`` where the loop had ``loss.backward()``.

    python examples/plain_pytorch.py                      # 10000 images, 2 epochs: about 10 s on a CPU core
    python examples/plain_pytorch.py --model vit          # the same loop with a stock transformers ViT

Nothing else changes: the optimizer, the data loader, clipping and the schedule are yours. ``ep_backward`` fills
each parameter's ``.grad`` with EP's gradient (adding to what is there, as ``backward`` does) and returns the loss
at the free state. A stock model of a supported type is adapted in place on the first call; under DDP, pass the
wrapped model so that the gradient all-reduce hooks fire. EP settings are the ``EPTrainingArguments`` fields as
keywords (``--ep_beta`` here).
"""

from __future__ import annotations

import argparse

import torch
from torch.utils.data import DataLoader

import mep_hf
from mep_hf.data import load_mnist


def make_model(name: str) -> torch.nn.Module:
    if name == "mlp":
        return mep_hf.EPMLPForImageClassification(mep_hf.EPMLPConfig(hidden_sizes=[256], num_labels=10))
    from transformers import ViTConfig, ViTForImageClassification  # a stock model: adapted on ep_backward's first call

    return ViTForImageClassification(ViTConfig(image_size=28, patch_size=7, num_channels=1, hidden_size=32,
                                               num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                                               num_labels=10))


def as_inputs(batch: dict, model_name: str) -> dict:
    if model_name == "mlp":
        return batch
    return {"pixel_values": batch["pixel_values"].view(-1, 1, 28, 28), "labels": batch["labels"]}


def main(argv: list[str] | None = None) -> dict[str, float]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", choices=["mlp", "vit"], default="mlp")
    p.add_argument("--train_examples", type=int, default=10000)
    p.add_argument("--test_examples", type=int, default=2000)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batch_size", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--ep_beta", type=float, default=None, help="fixed β (default: the scale-free one)")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    torch.manual_seed(a.seed)
    mnist = load_mnist()
    train = DataLoader(mnist["train"].select(range(a.train_examples)), batch_size=a.batch_size, shuffle=True)
    test = mnist["test"].select(range(a.test_examples))[:]
    model = make_model(a.model)
    optimizer = torch.optim.Adam(model.parameters(), lr=a.lr)
    for epoch in range(a.epochs):
        model.train()
        for step, batch in enumerate(train):
            loss = mep_hf.ep_backward(model, as_inputs(batch, a.model), ep_beta=a.ep_beta)  # loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            if step % 50 == 0:
                print(f"epoch {epoch} step {step}: loss {float(loss):.4f}")
    model.eval()
    with torch.no_grad():
        logits = model(**as_inputs(test, a.model)).logits
    accuracy = float((logits.argmax(-1) == test["labels"]).float().mean())
    print(f"test accuracy: {accuracy:.3f}")
    return {"loss": float(loss), "accuracy": accuracy}


if __name__ == "__main__":
    main()
