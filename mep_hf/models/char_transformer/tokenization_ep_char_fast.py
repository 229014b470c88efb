"""The character tokenizer as a ``tokenizers``-backed ``PreTrainedTokenizerFast``: one ``tokenizer.json``, loadable
with ``AutoTokenizer`` anywhere transformers is installed (no mep_hf, no remote code), same ids as
:class:`~mep_hf.models.char_transformer.tokenization_ep_char.EPCharTokenizer`."""

from __future__ import annotations

from transformers import PreTrainedTokenizerFast


def char_tokenizer_fast(vocab: dict[str, int], unk_token: str = "<unk>", pad_token: str = "<pad>",
                        **kwargs) -> PreTrainedTokenizerFast:
    """A fast tokenizer mapping each character to ``vocab[char]`` (unknown characters to ``unk_token``).

    ``tokenizers`` pipeline: split the text into single characters (``[\\s\\S]``, newlines included), look each up in
    a ``WordLevel`` vocabulary, add no special tokens; decoding concatenates (``Fuse``). ``unk_token`` and
    ``pad_token`` must be in ``vocab``.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

    for name, token in (("unk_token", unk_token), ("pad_token", pad_token)):
        if token not in vocab:
            raise ValueError(f"{name} {token!r} is not in the vocabulary")
    backend = Tokenizer(models.WordLevel(dict(vocab), unk_token=unk_token))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    backend.decoder = decoders.Fuse()
    kwargs.setdefault("clean_up_tokenization_spaces", False)
    kwargs.setdefault("model_input_names", ["input_ids", "attention_mask"])
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token=unk_token, pad_token=pad_token, **kwargs)


def char_tokenizer_fast_from(tokenizer) -> PreTrainedTokenizerFast:
    """The fast twin of a character tokenizer (an ``EPCharTokenizer``, or any with ``get_vocab``, ``unk_token``,
    ``pad_token``), with the same vocabulary and ids."""
    vocab = {t: i for t, i in tokenizer.get_vocab().items()}
    return char_tokenizer_fast(vocab, unk_token=str(tokenizer.unk_token), pad_token=str(tokenizer.pad_token),
                               model_max_length=tokenizer.model_max_length)
