"""Use zoo models as a Hugging Face user without mep_hf does: mep_hf is made unimportable first, then only
transformers runs (``trust_remote_code=True``). Prints one JSON line with what it measured.

    python use_zoo_without_mep_hf.py image <folder or repo id> <dir of <index>_<label id>.png>
    python use_zoo_without_mep_hf.py text <folder or repo id> <prompt> <new tokens>

``image``: ``pipeline("image-classification")`` on every PNG (PIL images); prints the accuracy against the label
ids in the file names, and a digest of the processor's pixel_values. ``text``: ``AutoTokenizer`` (no remote code) + ``pipeline("text-generation")``, greedy;
prints the text and the generated ids. Several jobs can follow each other on one command line (one JSON line each).
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


sys.meta_path.insert(0, BlockMepHf())


def image(model: str, images_dir: str) -> dict:
    from PIL import Image
    from transformers import pipeline

    classify = pipeline("image-classification", model=model, trust_remote_code=True)
    files = sorted(Path(images_dir).glob("*.png"), key=lambda p: int(p.stem.split("_")[0]))
    images = [Image.open(f) for f in files]
    labels = [classify.model.config.id2label[int(f.stem.split("_")[1])] for f in files]
    predictions = [out[0]["label"] for out in classify(images, top_k=1)]
    correct = sum(p == t for p, t in zip(predictions, labels))
    pixels = classify.image_processor(images, return_tensors="np")["pixel_values"].astype("float32")
    return {"accuracy": correct / len(files), "n": len(files), "model_class": type(classify.model).__module__,
            "processor_class": type(classify.image_processor).__name__,
            "pixels_sha256": hashlib.sha256(pixels.tobytes()).hexdigest()}


def text(model: str, prompt: str, new_tokens: str) -> dict:
    from transformers import AutoTokenizer, pipeline

    # The tokenizer is a plain tokenizer.json: no remote code (transformers reads config.json first, hence the
    # explicit trust_remote_code=False, which skips its interactive prompt).
    tokenizer = AutoTokenizer.from_pretrained(model, trust_remote_code=False)
    generate = pipeline("text-generation", model=model, tokenizer=tokenizer, trust_remote_code=True)
    out = generate(prompt, max_new_tokens=int(new_tokens), do_sample=False, return_full_text=True)[0]
    return {"text": out["generated_text"], "ids": tokenizer(out["generated_text"])["input_ids"],
            "tokenizer_class": type(tokenizer).__name__, "model_class": type(generate.model).__module__}


JOBS = {"image": (image, 2), "text": (text, 3)}

if __name__ == "__main__":
    args = sys.argv[1:]
    while args:  # several jobs in one process: ``image <model> <dir> text <model> <prompt> <n>``
        job, arity = JOBS[args[0]]
        result = job(*args[1 : 1 + arity])
        args = args[1 + arity :]
        result["mep_hf_imported"] = any(m == "mep_hf" or m.startswith("mep_hf.") for m in sys.modules)
        print(json.dumps(result))
