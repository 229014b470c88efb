"""A character tokenizer: one token per character, vocabulary stored as ``vocab.json``."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable

from transformers import PreTrainedTokenizer

VOCAB_FILES_NAMES = {"vocab_file": "vocab.json"}


class EPCharTokenizer(PreTrainedTokenizer):
    """Maps each character to an id (``vocab.json``: ``{char: id}``); unknown characters become ``unk_token``.

    Build one from text with :meth:`from_texts`; ``save_pretrained`` / ``from_pretrained`` / ``AutoTokenizer``
    round-trip it. No special tokens are added around sequences (a language model reads raw character streams).
    """

    vocab_files_names = VOCAB_FILES_NAMES
    model_input_names = ["input_ids", "attention_mask"]

    def __init__(self, vocab_file: str, unk_token: str = "<unk>", pad_token: str = "<pad>", **kwargs):
        with open(vocab_file, encoding="utf-8") as f:
            self.vocab: dict[str, int] = json.load(f)
        self.ids_to_tokens = {i: t for t, i in self.vocab.items()}
        for name, tok in (("unk_token", unk_token), ("pad_token", pad_token)):
            if str(tok) not in self.vocab:
                raise ValueError(f"{name} {tok!r} is not in the vocabulary {vocab_file}")
        kwargs.setdefault("clean_up_tokenization_spaces", False)
        super().__init__(unk_token=unk_token, pad_token=pad_token, **kwargs)

    @classmethod
    def from_texts(cls, texts: Iterable[str], save_directory: str, **kwargs) -> "EPCharTokenizer":
        """A tokenizer whose vocabulary is ``<pad>`` (id 0), ``<unk>`` (id 1) and every character of ``texts``."""
        chars = sorted({c for text in texts for c in text})
        vocab = {"<pad>": 0, "<unk>": 1, **{c: i + 2 for i, c in enumerate(chars)}}
        os.makedirs(save_directory, exist_ok=True)
        path = os.path.join(save_directory, VOCAB_FILES_NAMES["vocab_file"])
        with open(path, "w", encoding="utf-8") as f:
            json.dump(vocab, f, ensure_ascii=False, indent=0)
        return cls(path, **kwargs)

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def get_vocab(self) -> dict[str, int]:
        return {**self.vocab, **self.added_tokens_encoder}

    def _tokenize(self, text: str, **kwargs) -> list[str]:
        return list(text)

    def _convert_token_to_id(self, token: str) -> int:
        return self.vocab.get(token, self.vocab[str(self.unk_token)])

    def _convert_id_to_token(self, index: int) -> str:
        return self.ids_to_tokens.get(index, str(self.unk_token))

    def convert_tokens_to_string(self, tokens: list[str]) -> str:
        return "".join(tokens)

    def save_vocabulary(self, save_directory: str, filename_prefix: str | None = None) -> tuple[str]:
        name = (filename_prefix + "-" if filename_prefix else "") + VOCAB_FILES_NAMES["vocab_file"]
        path = os.path.join(save_directory, name)
        with open(path, "w", encoding="utf-8") as f:
            json.dump(self.vocab, f, ensure_ascii=False, indent=0)
        return (path,)
