"""Use zoo models as a Hugging Face user without mep_hf does. Run this file by its path, never import it: it makes
mep_hf unimportable first, then only transformers runs (``trust_remote_code=True``). ``mep-hf-zoo verify`` and the
tests start it in a fresh interpreter; it prints one JSON line per job.

    python without_mep_hf.py image <folder or repo id> <dir of <index>_<label id>.png> <batch size>
    python without_mep_hf.py text <folder or repo id> <prompt> <new tokens>

``image``: ``pipeline("image-classification")`` on every PNG, as PIL images, in index order and batches of
``batch size``; prints the accuracy against the label ids in the file names and a digest of the processor's
``pixel_values``. ``text``: ``AutoTokenizer`` (no remote code: a plain ``tokenizer.json``) and
``pipeline("text-generation")``, greedy; prints the text and its ids. Jobs can follow each other on one line.
"""

from __future__ import annotations

import hashlib
import importlib.abc
import json
import sys
from pathlib import Path


class BlockMepHf(importlib.abc.MetaPathFinder):
    """Every ``import mep_hf...`` fails, as in an environment where mep_hf is not installed."""

    def find_spec(self, name, path=None, target=None):
        if name == "mep_hf" or name.startswith("mep_hf."):
            raise ModuleNotFoundError(f"No module named {name!r} (blocked: this process runs without mep_hf)",
                                      name=name)
        return None


def image(model: str, images_dir: str, batch_size: str, trust_remote_code: bool = True) -> dict:
    """(``mep-hf-zoo verify`` also calls it in its own process with ``trust_remote_code=False``: mep_hf's classes.)"""
    from PIL import Image
    from transformers import pipeline

    classify = pipeline("image-classification", model=model, trust_remote_code=trust_remote_code)
    files = sorted(Path(images_dir).glob("*.png"), key=lambda p: int(p.stem.split("_")[0]))
    images = [Image.open(f) for f in files]
    labels = [classify.model.config.id2label[int(f.stem.split("_")[1])] for f in files]
    predictions = [out[0]["label"] for out in classify(images, top_k=1, batch_size=int(batch_size))]
    correct = sum(p == t for p, t in zip(predictions, labels))
    digest = hashlib.sha256()
    for start in range(0, len(images), 1000):
        pixels = classify.image_processor(images[start : start + 1000], return_tensors="np")["pixel_values"]
        digest.update(pixels.astype("float32").tobytes())
    return {"accuracy": correct / len(files), "correct": correct, "n": len(files),
            "model_class": type(classify.model).__module__,
            "processor_class": type(classify.image_processor).__name__, "pixels_sha256": digest.hexdigest()}


def text(model: str, prompt: str, new_tokens: str) -> dict:
    from transformers import AutoTokenizer, pipeline

    # transformers reads config.json before tokenizer.json; trust_remote_code=False skips its remote-code prompt
    tokenizer = AutoTokenizer.from_pretrained(model, trust_remote_code=False)
    generate = pipeline("text-generation", model=model, tokenizer=tokenizer, trust_remote_code=True)
    out = generate(prompt, max_new_tokens=int(new_tokens), do_sample=False, return_full_text=True)[0]
    return {"text": out["generated_text"], "ids": tokenizer(out["generated_text"])["input_ids"],
            "tokenizer_class": type(tokenizer).__name__, "model_class": type(generate.model).__module__}


JOBS = {"image": (image, 3), "text": (text, 3)}


def main(args: list[str]) -> None:
    sys.meta_path.insert(0, BlockMepHf())
    # run by path, this file's folder (mep_hf/hub) heads sys.path: its modules must not shadow installed ones
    here = Path(__file__).resolve().parent
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != here]
    while args:  # several jobs in one process: ``image <model> <dir> <batch> text <model> <prompt> <n>``
        job, arity = JOBS[args[0]]
        result = job(*args[1 : 1 + arity])
        args = args[1 + arity :]
        result["mep_hf_imported"] = any(m == "mep_hf" or m.startswith("mep_hf.") for m in sys.modules)
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
