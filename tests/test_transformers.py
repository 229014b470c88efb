"""The EP-native char-LM: gradient equivalence in float64 (centered nudging, beta=1e-3, three sweeps), Trainer round
trips through ``save_pretrained`` and the Auto classes, the tokenizer, ``generate()``.

Stock transformers models (GPT-2, BERT, Llama, ... through the family adapters) are tested in
``tests/test_adapters.py``.
"""

import pytest
import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer

from mep_hf import EPTrainer
from mep_hf.models import EPCharTokenizer, EPCharTransformerConfig, EPCharTransformerForCausalLM
from tests.conftest import toy_args
from tests.test_gradient_equivalence import assert_match, compare


def ids_and_padding(vocab, batch=4, length=10, seed=0):
    """Random token ids; row 0 left-padded (3 pads), row 1 right-padded (2 pads); labels -100 on the padding."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(2, vocab, (batch, length), generator=g)
    mask = torch.ones_like(ids)
    mask[0, :3] = 0
    mask[1, -2:] = 0
    labels = ids.masked_fill(mask == 0, -100)
    return ids, mask, labels


def tiny_char_lm(seed=0, vocab=30, **config) -> EPCharTransformerForCausalLM:
    torch.manual_seed(seed)
    config = dict(vocab_size=vocab, max_position_embeddings=16, hidden_size=16, num_hidden_layers=2,
                  num_attention_heads=2, **config)
    return EPCharTransformerForCausalLM(EPCharTransformerConfig(**config))


# ----------------------------------------------------------------------------------------- gradient equivalence
@pytest.mark.parametrize("padded", [False, True], ids=["dense", "padded"])
def test_char_transformer_gradients_match_backprop(padded):
    model = tiny_char_lm().double()
    ids, mask, labels = ids_and_padding(30)
    mask, labels = (mask, labels) if padded else (None, ids)
    stack = model.ep_stack(input_ids=ids, attention_mask=mask, labels=labels)
    assert stack.inputs.dtype == torch.long  # s_0 is the integer ids, clamped
    cos, rel = compare(list(model.parameters()), stack,
                       lambda c: model(input_ids=ids, attention_mask=mask, labels=labels, ep_contrast=c))
    assert_match(cos, rel)


# ----------------------------------------------------------------------------------------- Trainer + Hub round trips
def lm_dataset(vocab, n=64, length=12, seed=0) -> Dataset:
    """A learnable toy language: each row counts up modulo the vocabulary from a random start."""
    g = torch.Generator().manual_seed(seed)
    start = torch.randint(2, vocab, (n, 1), generator=g)
    ids = (start + torch.arange(length)) % (vocab - 2) + 2
    return Dataset.from_dict({"input_ids": ids.numpy(), "labels": ids.numpy()}).with_format("torch")


def test_char_lm_trains_saves_and_generates(tmp_path):
    tok = EPCharTokenizer.from_texts(["abcdefghij klmnop\n"], str(tmp_path / "tok"))
    model = tiny_char_lm(vocab=tok.vocab_size)
    data = lm_dataset(tok.vocab_size)
    trainer = EPTrainer(model=model, args=toy_args(tmp_path, max_steps=10, learning_rate=1e-2, logging_steps=5),
                        train_dataset=data)
    first = model(**data[:16]).loss.item()
    trainer.train()
    assert model(**data[:16]).loss.item() < first
    model.save_pretrained(tmp_path / "lm")
    tok.save_pretrained(tmp_path / "lm")
    loaded, tok2 = AutoModelForCausalLM.from_pretrained(tmp_path / "lm"), AutoTokenizer.from_pretrained(tmp_path / "lm")
    assert type(loaded) is EPCharTransformerForCausalLM and type(tok2) is EPCharTokenizer
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, loaded.state_dict()[k], rtol=0, atol=0, msg=k)
    enc = tok2(["abc", "k"], return_tensors="pt", padding=True)
    out = loaded.generate(**enc, max_new_tokens=20, do_sample=False, pad_token_id=tok2.pad_token_id)
    assert out.shape == (2, enc["input_ids"].shape[1] + 20)  # longer than the 16-token context: the window slides
    assert isinstance(tok2.decode(out[0]), str)


def test_char_tokenizer_round_trip(tmp_path):
    text = "To be, or not to be:\n  that is the question."
    tok = EPCharTokenizer.from_texts([text], str(tmp_path / "a"))
    ids = tok(text)["input_ids"]
    assert len(ids) == len(text) and tok.decode(ids) == text
    assert tok("Zq")["input_ids"] == [tok.unk_token_id, tok.convert_tokens_to_ids("q")]
    tok.save_pretrained(tmp_path / "b")
    back = AutoTokenizer.from_pretrained(tmp_path / "b")
    assert type(back) is EPCharTokenizer and back.get_vocab() == tok.get_vocab()
    assert back(text)["input_ids"] == ids and back.pad_token_id == 0
