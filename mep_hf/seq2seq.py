"""EP for ``Seq2SeqTrainer``: :class:`EPSeq2SeqTrainer` and :class:`EPSeq2SeqTrainingArguments`.

Swap ``Seq2SeqTrainer`` for ``EPSeq2SeqTrainer`` and ``Seq2SeqTrainingArguments`` for ``EPSeq2SeqTrainingArguments``
(and ``Trainer``'s EP flags come with them); everything else of a translation or summarization script stays.
``EPSeq2SeqTrainer`` is ``class EPSeq2SeqTrainer(EPTrainer, Seq2SeqTrainer)``: training steps are EP's, nudging with
the loss ``Trainer.compute_loss`` computes (Seq2SeqTrainer keeps Trainer's), while evaluation and prediction are
Seq2SeqTrainer's own, ``predict_with_generate`` included: ``generate()`` runs the stock model, which the
encoder–decoder adapter (:mod:`mep_hf.adapters.traced`) leaves as it is.
"""

from __future__ import annotations

from dataclasses import dataclass

from transformers import Seq2SeqTrainer, Seq2SeqTrainingArguments

from .trainer import EPTrainer
from .training_args import EPTrainingArguments

__all__ = ["EPSeq2SeqTrainer", "EPSeq2SeqTrainingArguments"]


@dataclass
class EPSeq2SeqTrainingArguments(EPTrainingArguments, Seq2SeqTrainingArguments):
    """``Seq2SeqTrainingArguments`` (``predict_with_generate``, ``generation_max_length``, ``generation_num_beams``,
    ``generation_config``, ``sortish_sampler``) plus the EP settings of :class:`~mep_hf.EPTrainingArguments`: one
    dataclass, so ``HfArgumentParser`` parses both."""


class EPSeq2SeqTrainer(EPTrainer, Seq2SeqTrainer):
    """``Seq2SeqTrainer`` trained by EP (a T5, flan-T5, BART or mBART ``*ForConditionalGeneration``, or any model
    :func:`~mep_hf.adapters.prepare_ep_model` takes); takes :class:`EPSeq2SeqTrainingArguments`."""

    def __init__(self, model=None, args: EPSeq2SeqTrainingArguments | None = None, **kwargs):
        if args is None:
            args = EPSeq2SeqTrainingArguments(output_dir="tmp_trainer")
        if not isinstance(args, EPSeq2SeqTrainingArguments):
            raise TypeError(
                f"EPSeq2SeqTrainer needs EPSeq2SeqTrainingArguments, got {type(args).__name__}: Seq2SeqTrainer's "
                "evaluation reads predict_with_generate and the generation settings, EP's step the ep_* flags"
            )
        super().__init__(model=model, args=args, **kwargs)
