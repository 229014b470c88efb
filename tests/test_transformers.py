"""Transformers under EP: the char-LM, and stock GPT-2 / BERT through their adapters.

Gradient equivalence in float64 (centered nudging, beta=1e-3, three sweeps), Trainer round trips through
``save_pretrained`` and the Auto classes, the tokenizer, ``generate()``, and clear errors for what is unsupported.
"""

import inspect

import pytest
import torch
from datasets import Dataset
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    BertConfig,
    BertForSequenceClassification,
    GPT2Config,
    GPT2ForSequenceClassification,
    GPT2LMHeadModel,
)

from mep_hf import EPTrainer
from mep_hf.adapters import prepare_ep_model
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


def tiny_gpt2(seed=0, **config) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    config = dict(vocab_size=40, n_positions=16, n_embd=16, n_layer=2, n_head=2, bos_token_id=1, eos_token_id=1, **config)
    return GPT2LMHeadModel(GPT2Config(**config))


def tiny_bert(seed=0) -> BertForSequenceClassification:
    torch.manual_seed(seed)
    return BertForSequenceClassification(BertConfig(
        vocab_size=40, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
        max_position_embeddings=16, num_labels=3,
    ))


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


@pytest.mark.parametrize("padded", [False, True], ids=["dense", "padded"])
def test_gpt2_gradients_match_backprop(padded):
    model = prepare_ep_model(tiny_gpt2().double())
    assert model.lm_head.weight is model.transformer.wte.weight  # tied: one parameter in the first and last block
    ids, mask, labels = ids_and_padding(40)
    mask, labels = (mask, labels) if padded else (None, ids)
    stack = model.ep_stack(input_ids=ids, attention_mask=mask, labels=labels)
    # The free phase is the stock forward pass, logits and loss alike.
    reference = model(input_ids=ids, attention_mask=mask, labels=labels)
    s = ids
    for block in stack.blocks:
        s = block(s)
    torch.testing.assert_close(s, reference.logits)
    torch.testing.assert_close(stack.loss(s), reference.loss, rtol=1e-6, atol=1e-6)
    cos, rel = compare(list(model.parameters()), stack,
                       lambda c: model(input_ids=ids, attention_mask=mask, labels=labels, ep_contrast=c))
    assert_match(cos, rel)


def test_bert_classifier_gradients_match_backprop():
    model = prepare_ep_model(tiny_bert().double())
    ids, mask, _ = ids_and_padding(40)
    labels = torch.tensor([0, 2, 1, 2])
    stack = model.ep_stack(input_ids=ids, attention_mask=mask, labels=labels)
    # Key biases get an exactly-zero gradient (softmax is shift-invariant over keys): both methods give rounding
    # noise there, so they are left out of the comparison. They still take part in every phase.
    params = [p for n, p in model.named_parameters() if not n.endswith("attention.self.key.bias")]
    cos, rel = compare(params, stack, lambda c: model(input_ids=ids, attention_mask=mask, labels=labels, ep_contrast=c))
    assert_match(cos, rel)


# ----------------------------------------------------------------------------------------- adapters
def test_adapter_keeps_signature_and_is_idempotent():
    model = tiny_gpt2()
    before = inspect.signature(model.forward)
    adapted = prepare_ep_model(model)
    assert adapted is model and prepare_ep_model(model) is model
    assert inspect.signature(model.forward) == before
    assert type(model) is GPT2LMHeadModel  # only the instance changed: save/load with the stock class still work
    ids = torch.randint(0, 40, (2, 6))
    out = model(ids, labels=ids)  # positional arguments still reach the stock forward
    assert out.logits.shape == (2, 6, 40) and out.loss.ndim == 0
    assert callable(tiny_char_lm().ep_stack)  # EP-native models need no adapter


def test_ep_stack_switches_dropout_off():
    model = prepare_ep_model(tiny_gpt2(resid_pdrop=0.5, embd_pdrop=0.5, attn_pdrop=0.5))
    model.train()
    ids = torch.randint(0, 40, (2, 6))
    stack = model.ep_stack(input_ids=ids, labels=ids)
    assert not model.training

    def run():
        s = ids
        for block in stack.blocks:
            s = block(s)
        return s

    torch.testing.assert_close(run(), run(), rtol=0, atol=0)


def test_unsupported_models_fail_clearly():
    with pytest.raises(TypeError, match="cross-attention"):
        prepare_ep_model(tiny_gpt2(add_cross_attention=True))
    with pytest.raises(TypeError, match="only GPT2LMHeadModel"):
        torch.manual_seed(0)
        prepare_ep_model(GPT2ForSequenceClassification(GPT2Config(vocab_size=40, n_positions=16, n_embd=16, n_layer=1,
                                                                  n_head=2, pad_token_id=0)))
    with pytest.raises(TypeError, match="no adapter is registered for model_type='t5'"):
        from transformers import T5Config, T5ForConditionalGeneration

        prepare_ep_model(T5ForConditionalGeneration(T5Config(vocab_size=32, d_model=8, d_kv=4, d_ff=8, num_layers=1,
                                                             num_heads=2)))
    model = prepare_ep_model(tiny_gpt2())
    ids = torch.randint(0, 40, (2, 6))
    with pytest.raises(TypeError, match="cache"):
        model.ep_stack(input_ids=ids, labels=ids, use_cache=True)
    with pytest.raises(ValueError, match="needs `labels`"):
        model.ep_stack(input_ids=ids)


# ----------------------------------------------------------------------------------------- Trainer + Hub round trips
def lm_dataset(vocab, n=64, length=12, seed=0) -> Dataset:
    """A learnable toy language: each row counts up modulo the vocabulary from a random start."""
    g = torch.Generator().manual_seed(seed)
    start = torch.randint(2, vocab, (n, 1), generator=g)
    ids = (start + torch.arange(length)) % (vocab - 2) + 2
    return Dataset.from_dict({"input_ids": ids.numpy(), "labels": ids.numpy()}).with_format("torch")


def test_gpt2_trained_by_ep_round_trips_through_auto_classes(tmp_path):
    model = tiny_gpt2()
    data = lm_dataset(40)
    trainer = EPTrainer(model=model, args=toy_args(tmp_path, max_steps=8, learning_rate=1e-2, logging_steps=4),
                        train_dataset=data)
    first = model(**data[:16]).loss.item()
    trainer.train()
    assert model(**data[:16]).loss.item() < first
    assert all("ep_energy" in h for h in trainer.state.log_history if "loss" in h)
    model.save_pretrained(tmp_path / "gpt2")
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "gpt2")
    assert type(loaded) is GPT2LMHeadModel
    assert loaded.lm_head.weight is loaded.transformer.wte.weight
    saved, back = model.state_dict(), loaded.state_dict()
    assert saved.keys() == back.keys()
    for k in saved:
        torch.testing.assert_close(saved[k], back[k], rtol=0, atol=0, msg=k)


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
