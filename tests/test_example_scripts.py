"""Scripts written like the stock Hugging Face examples (``tests/scripts/run_*.py``), with only the Trainer ->
EPTrainer / TrainingArguments -> EPTrainingArguments swap, train stock models by EP, offline:

* ``run_clm.py``: a Llama-style decoder from ``--model_type llama --config_overrides``, causal LM;
* ``run_mlm.py``: a BERT encoder, masked LM (``DataCollatorForLanguageModeling``);
* ``run_classification.py``: the same BERT, text classification from a csv file;
* ``run_image_classification.py``: a ViT on an ``imagefolder`` of PNGs;
* ``run_qa.py``: BERT extractive question answering (start/end positions) from SQuAD-format json;
* ``run_translation.py`` (T5) and ``run_summarization.py`` (BART): ``Seq2SeqTrainer`` / ``Seq2SeqTrainingArguments``
  swapped for ``EPSeq2SeqTrainer`` / ``EPSeq2SeqTrainingArguments``, evaluated with ``predict_with_generate``.

The tokenizer is a word-level ``tokenizers`` one built here; the models are tiny configs saved with
``save_pretrained``. Each run is a few steps; what is checked is that the stock plumbing (argument parsing,
``datasets.map``, grouping, collators, evaluation, saving) runs through EPTrainer, and that EP did the training.
"""

from __future__ import annotations

import json
import random
import runpy
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

SCRIPTS = Path(__file__).resolve().parent / "scripts"
SWAP = "from mep_hf import EPTrainer as Trainer, EPTrainingArguments as TrainingArguments  # the swap"
STOCK = "from transformers import Trainer, TrainingArguments"
SEQ2SEQ_SWAP = ("from mep_hf import EPSeq2SeqTrainer as Seq2SeqTrainer, EPSeq2SeqTrainingArguments as "
                "Seq2SeqTrainingArguments  # the swap")
SEQ2SEQ_STOCK = "from transformers import Seq2SeqTrainer, Seq2SeqTrainingArguments"
WORDS = "the a is red blue green small big cat dog bird fish sees likes chases happy sad glad gloomy and .".split()
EP_FLAGS = ["--ep_beta", "0.01", "--ep_nudging", "centered", "--ep_settle_steps", "2"]


def common_flags(out: Path, cache: Path) -> list[str]:
    return ["--output_dir", str(out), "--cache_dir", str(cache), "--do_train", "--do_eval", "--max_steps", "3",
            "--per_device_train_batch_size", "4", "--per_device_eval_batch_size", "8", "--learning_rate", "1e-3",
            "--logging_steps", "1", "--save_strategy", "no", "--report_to", "none", "--use_cpu", "--seed", "0",
            "--disable_tqdm", "true", *EP_FLAGS]


def run_script(name: str, argv: list[str], monkeypatch) -> None:
    monkeypatch.setattr(sys, "argv", [name, *argv])
    runpy.run_path(str(SCRIPTS / name), run_name="__main__")


def close_to_backprop(name: str, script_args: list[str], out: Path, tmp_path: Path, monkeypatch,
                      eval_examples: int) -> None:
    """EP's run ends where the stock script (plain ``Trainer``, backprop) ends on the same flags, seed and data.

    Three steps leave these tiny models at chance accuracy, so accuracy alone cannot tell EP from no training.
    The reference can: the stock script once with training and once evaluating the initial model (``L_0``). EP's
    eval loss must lie within 10% of the distance backprop's training moved it, ``|L_EP − L_BP| ≤ 0.1·|L_BP − L_0|``,
    and its accuracy within one eval example of backprop's. Measured: 0.7% (BERT classification) and 3.5% (ViT) of
    the move, the accuracies equal. Negative controls: no training (``--learning_rate 0``) is 100% of the move; β = 1
    on the ViT 79%; BERT with ``--seed 1`` 146%.
    """
    stock_script = tmp_path / "stock" / name
    stock_script.parent.mkdir(parents=True, exist_ok=True)
    stock_script.write_text((SCRIPTS / name).read_text().replace(SWAP, STOCK))
    flags = common_flags(tmp_path / "backprop", tmp_path / "cache")[: -len(EP_FLAGS)]
    results = {}
    for run, run_flags in (("backprop", flags), ("initial", [f for f in flags if f != "--do_train"])):
        run_flags = [str(tmp_path / run) if f == str(tmp_path / "backprop") else f for f in run_flags]
        monkeypatch.setattr(sys, "argv", [name, *script_args, *run_flags])
        runpy.run_path(str(stock_script), run_name="__main__")
        results[run] = json.loads((tmp_path / run / "eval_results.json").read_text())
    ep = json.loads((out / "eval_results.json").read_text())
    bp, initial = results["backprop"], results["initial"]
    moved = abs(bp["eval_loss"] - initial["eval_loss"])
    assert moved > 0, "backprop's three steps did not change the eval loss: the reference says nothing"
    gap = abs(ep["eval_loss"] - bp["eval_loss"])
    assert gap <= 0.1 * moved, f"EP's eval loss {ep['eval_loss']} is {gap / moved:.1%} of backprop's move away from it"
    assert abs(ep["eval_accuracy"] - bp["eval_accuracy"]) <= 1 / eval_examples + 1e-9, (ep, bp)


def trained_by_ep(out: Path) -> bool:
    """EPTrainer logs the settling diagnostics beside the loss; plain Trainer never does."""
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    logged = [h for h in history if "loss" in h]
    return bool(logged) and all("ep_energy" in h and np.isfinite(h["loss"]) for h in logged)


@pytest.mark.parametrize("script", sorted(p.name for p in SCRIPTS.glob("run_*.py")))
def test_scripts_differ_from_stock_by_the_swap_only(script):
    source = (SCRIPTS / script).read_text()
    assert source.count(SWAP) + source.count(SEQ2SEQ_SWAP) == 1
    stock = source.replace(SWAP, STOCK).replace(SEQ2SEQ_SWAP, SEQ2SEQ_STOCK)
    assert "mep_hf" not in stock.replace("mep-hf", "") and "EPTrainer" not in stock.split('"""', 2)[2]


@pytest.fixture(scope="module")
def text_files(tmp_path_factory):
    """A word-level tokenizer, a text corpus and a labelled csv, all built here."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    root = tmp_path_factory.mktemp("text")
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab = {w: i for i, w in enumerate(specials + WORDS)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                                   sep_token="[SEP]", mask_token="[MASK]", model_max_length=64)
    fast.save_pretrained(root / "tokenizer")
    rng = random.Random(0)

    def sentence(mood: str) -> str:
        adjective = rng.choice(["happy", "glad"] if mood == "pos" else ["sad", "gloomy"])
        return (f"the {rng.choice(['red', 'blue', 'green'])} {rng.choice(['cat', 'dog', 'bird'])} is {adjective} "
                f"and {rng.choice(['sees', 'likes', 'chases'])} a {rng.choice(['small', 'big'])} fish .")

    lines = [sentence(rng.choice(["pos", "neg"])) for _ in range(120)]
    (root / "train.txt").write_text("\n".join(lines[:100]) + "\n")
    (root / "valid.txt").write_text("\n".join(lines[100:]) + "\n")
    for split, n in (("train", 48), ("dev", 16)):
        moods = [rng.choice(["pos", "neg"]) for _ in range(n)]
        rows = ["sentence,label"] + [f"{sentence(m)},{int(m == 'pos')}" for m in moods]
        (root / f"{split}.csv").write_text("\n".join(rows) + "\n")
    return root, len(fast)


def tiny_bert_dir(root: Path, tokenizer_dir: Path, vocab_size: int, cls) -> Path:
    from transformers import AutoTokenizer, BertConfig

    torch.manual_seed(0)
    model = cls(BertConfig(vocab_size=vocab_size, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                           intermediate_size=32, max_position_embeddings=64, pad_token_id=0))
    out = root / cls.__name__
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(out)
    return out


def test_run_clm_llama(text_files, tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM, LlamaForCausalLM

    root, vocab_size = text_files
    overrides = (f"vocab_size={vocab_size},hidden_size=16,intermediate_size=32,num_hidden_layers=2,"
                 "num_attention_heads=2,num_key_value_heads=1,max_position_embeddings=64")
    out = tmp_path / "clm"
    run_script("run_clm.py", ["--model_type", "llama", "--config_overrides", overrides, "--tokenizer_name",
                              str(root / "tokenizer"), "--train_file", str(root / "train.txt"), "--validation_file",
                              str(root / "valid.txt"), "--block_size", "16", *common_flags(out, tmp_path / "cache")],
               monkeypatch)
    assert trained_by_ep(out)
    assert np.isfinite(json.loads((out / "eval_results.json").read_text())["perplexity"])
    assert type(AutoModelForCausalLM.from_pretrained(out)) is LlamaForCausalLM


def test_run_mlm_bert(text_files, tmp_path, monkeypatch):
    from transformers import BertForMaskedLM

    root, vocab_size = text_files
    model_dir = tiny_bert_dir(tmp_path, root / "tokenizer", vocab_size, BertForMaskedLM)
    out = tmp_path / "mlm"
    run_script("run_mlm.py", ["--model_name_or_path", str(model_dir), "--train_file", str(root / "train.txt"),
                              "--validation_file", str(root / "valid.txt"), "--max_seq_length", "16",
                              *common_flags(out, tmp_path / "cache")], monkeypatch)
    assert trained_by_ep(out)
    assert np.isfinite(json.loads((out / "eval_results.json").read_text())["perplexity"])


def test_run_classification_bert(text_files, tmp_path, monkeypatch):
    from transformers import BertForSequenceClassification

    root, vocab_size = text_files
    model_dir = tiny_bert_dir(tmp_path, root / "tokenizer", vocab_size, BertForSequenceClassification)
    out = tmp_path / "cls"
    script_args = ["--model_name_or_path", str(model_dir), "--train_file", str(root / "train.csv"),
                   "--validation_file", str(root / "dev.csv"), "--text_column_names", "sentence",
                   "--label_column_name", "label"]
    run_script("run_classification.py", [*script_args, *common_flags(out, tmp_path / "cache")], monkeypatch)
    assert trained_by_ep(out)
    close_to_backprop("run_classification.py", script_args, out, tmp_path, monkeypatch, eval_examples=16)


def test_run_image_classification_vit(tmp_path, monkeypatch):
    from PIL import Image
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    rng = np.random.default_rng(0)
    for label in ("bright_top", "bright_bottom"):
        (tmp_path / "images" / label).mkdir(parents=True)
        for i in range(12):
            x = rng.integers(0, 100, (8, 8, 3), dtype=np.uint8)
            x[:4] += 150 if label == "bright_top" else 0
            x[4:] += 150 if label == "bright_bottom" else 0
            Image.fromarray(x).save(tmp_path / "images" / label / f"{i}.png")
    torch.manual_seed(0)
    model_dir = tmp_path / "vit"
    ViTForImageClassification(ViTConfig(image_size=8, patch_size=4, num_channels=3, hidden_size=16,
                                         num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
                                         num_labels=2)).save_pretrained(model_dir)
    ViTImageProcessor(size={"height": 8, "width": 8}).save_pretrained(model_dir)
    out = tmp_path / "img"
    script_args = ["--model_name_or_path", str(model_dir), "--train_dir", str(tmp_path / "images"),
                   "--remove_unused_columns", "False"]
    run_script("run_image_classification.py", [*script_args, *common_flags(out, tmp_path / "cache")], monkeypatch)
    assert trained_by_ep(out)
    # 6 of the 24 images are the eval split (the script's train_val_split 0.25)
    close_to_backprop("run_image_classification.py", script_args, out, tmp_path, monkeypatch, eval_examples=6)


@pytest.fixture(scope="module")
def task_files(tmp_path_factory):
    """For QA and the Seq2Seq scripts: one vocabulary (the words, questions, and a made-up target language: each word
    with ``_x``), a BERT-style and a T5/BART-style tokenizer of it, and the data files."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    root = tmp_path_factory.mktemp("tasks")
    specials = ["<pad>", "</s>", "<unk>", "<s>", "[CLS]", "[SEP]", "[MASK]"]
    words = WORDS + ["what", "does", "?", "translate", ":"] + [f"{w}_x" for w in WORDS]
    vocab = {w: i for i, w in enumerate(specials + words)}
    templates = {"bert": ("[CLS] $A [SEP]", "[CLS] $A [SEP] $B [SEP]", [("[CLS]", 4), ("[SEP]", 5)]),
                 "seq2seq": ("$A </s>", "$A </s> $B </s>", [("</s>", 1)])}
    for name, (single, pair, special_tokens) in templates.items():
        tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
        tok.pre_tokenizer = pre_tokenizers.Whitespace()
        tok.post_processor = processors.TemplateProcessing(single=single, pair=pair, special_tokens=special_tokens)
        PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>", eos_token="</s>",
                                bos_token="<s>", cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]",
                                model_max_length=64).save_pretrained(root / name)
    rng = random.Random(0)
    for split, n in (("train", 32), ("dev", 8)):
        qa, translation, summaries = [], [], ["text,summary"]
        for i in range(n):
            color, animal, size = rng.choice(["red", "blue", "green"]), rng.choice(["cat", "dog", "bird"]), rng.choice(
                ["small", "big"])
            verb, mood = rng.choice(["sees", "likes", "chases"]), rng.choice(["happy", "sad"])
            text = f"the {color} {animal} is {mood} and {verb} a {size} fish ."
            answer = f"{size} fish"
            qa.append({"id": f"{split}{i}", "title": "", "context": text, "question": f"what does the {animal} {verb} ?",
                       "answers": {"text": [answer], "answer_start": [text.index(answer)]}})
            translation.append({"translation": {"en": text, "xx": " ".join(f"{w}_x" for w in text.split())}})
            summaries.append(f"{text},the {animal} is {mood}")
        for name, rows in (("qa", qa), ("translation", translation)):
            (root / f"{name}_{split}.json").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
        (root / f"summaries_{split}.csv").write_text("\n".join(summaries) + "\n")
    return root, len(vocab)


def generation_evaluated(out: Path, metric: str) -> None:
    """Evaluation ran with predict_with_generate: the script's metric of the generated texts is in the results."""
    results = json.loads((out / "eval_results.json").read_text())
    assert np.isfinite(results["eval_loss"]) and 0 < results["eval_gen_len"] and metric in results, results


def test_run_qa_bert(task_files, tmp_path, monkeypatch):
    from transformers import BertForQuestionAnswering

    root, vocab_size = task_files
    model_dir = tiny_bert_dir(tmp_path, root / "bert", vocab_size, BertForQuestionAnswering)
    out = tmp_path / "qa"
    run_script("run_qa.py", ["--model_name_or_path", str(model_dir), "--train_file", str(root / "qa_train.json"),
                             "--validation_file", str(root / "qa_dev.json"), "--max_seq_length", "32",
                             "--doc_stride", "8", *common_flags(out, tmp_path / "cache")], monkeypatch)
    assert trained_by_ep(out)
    results = json.loads((out / "eval_results.json").read_text())
    assert np.isfinite(results["eval_loss"]) and 0 <= results["eval_exact_match"] <= 1


def test_run_translation_t5(task_files, tmp_path, monkeypatch):
    from transformers import AutoTokenizer, T5Config, T5ForConditionalGeneration

    root, vocab_size = task_files
    torch.manual_seed(0)
    model_dir = tmp_path / "t5"
    T5ForConditionalGeneration(T5Config(vocab_size=vocab_size, d_model=16, d_kv=8, d_ff=32, num_layers=2, num_heads=2,
                                        relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1,
                                        decoder_start_token_id=0)).save_pretrained(model_dir)
    AutoTokenizer.from_pretrained(root / "seq2seq").save_pretrained(model_dir)
    out = tmp_path / "translation"
    run_script("run_translation.py", ["--model_name_or_path", str(model_dir), "--source_lang", "en", "--target_lang",
                                      "xx", "--source_prefix", "translate : ", "--train_file",
                                      str(root / "translation_train.json"), "--validation_file",
                                      str(root / "translation_dev.json"), "--predict_with_generate",
                                      "--generation_max_length", "16", *common_flags(out, tmp_path / "cache")],
               monkeypatch)
    assert trained_by_ep(out)
    generation_evaluated(out, "eval_exact_match")


def test_run_summarization_bart(task_files, tmp_path, monkeypatch):
    from transformers import AutoTokenizer, BartConfig, BartForConditionalGeneration

    root, vocab_size = task_files
    torch.manual_seed(0)
    model_dir = tmp_path / "bart"
    BartForConditionalGeneration(BartConfig(
        vocab_size=vocab_size, d_model=16, encoder_layers=2, decoder_layers=2, encoder_attention_heads=2,
        decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32, max_position_embeddings=64,
        pad_token_id=0, bos_token_id=3, eos_token_id=1, decoder_start_token_id=1, forced_eos_token_id=1,
    )).save_pretrained(model_dir)
    AutoTokenizer.from_pretrained(root / "seq2seq").save_pretrained(model_dir)
    out = tmp_path / "summarization"
    run_script("run_summarization.py", ["--model_name_or_path", str(model_dir), "--train_file",
                                        str(root / "summaries_train.csv"), "--validation_file",
                                        str(root / "summaries_dev.csv"), "--predict_with_generate",
                                        "--generation_max_length", "8", *common_flags(out, tmp_path / "cache")],
               monkeypatch)
    assert trained_by_ep(out)
    generation_evaluated(out, "eval_unigram_f1")
