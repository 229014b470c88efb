"""TRL's SFTTrainer trained by EP (``mep_hf.trl``): EPSFTTrainer's update equals SFTTrainer's backprop update.

Every parity case trains the same float64 tiny Llama twice on the same text data and ``SFTConfig`` settings, once
with ``SFTTrainer`` (backprop through its fused LM head) and once with ``EPSFTTrainer`` (β = 1e-5, centered nudging,
settled), plain SGD without clipping (``tests/parity.py``), and compares the parameter updates:
``‖Δ_EP − Δ_backprop‖ / ‖Δ_backprop‖ ≤ 1e-4``. Rows are of uneven length and batches are accumulated, so a nudge
that ignored SFT's loss (its completion mask, its packing, its DFT weighting, its token count) would be percents
off; the negative controls show the comparison catches that and a biased EP gradient.
"""

from __future__ import annotations

import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

trl = pytest.importorskip("trl")

from datasets import Dataset  # noqa: E402
from tokenizers import Tokenizer, models, pre_tokenizers  # noqa: E402
from transformers import PreTrainedTokenizerFast, TrainingArguments  # noqa: E402
from trl import SFTConfig, SFTTrainer  # noqa: E402

from mep_hf import EPTrainer, EPTrainingArguments  # noqa: E402
from mep_hf.trl import EPSFTConfig, EPSFTTrainer  # noqa: E402
from tests.adapter_models import tiny_model  # noqa: E402
from tests.parity import relative_difference, train_update  # noqa: E402

BOUND = 1e-4
ROOT = Path(__file__).resolve().parents[1]
SPECIALS = ["<pad>", "<s>", "</s>", "<unk>"]  # ids 0-2 are the tiny configs' pad / bos / eos
WORDS = "the a cat dog bird fish is was happy sad red blue green small big sees likes chases and or".split()
# SFT settings shared by every run (TRL's own defaults would put bf16 autocast and checkpointing in the way)
RENAMED = "activation_checkpointing" in TrainingArguments.__dataclass_fields__  # transformers 5.24's new name
NO_CHECKPOINTING = {"activation_checkpointing": False} if RENAMED else {"gradient_checkpointing": False}
SFT = dict(bf16=False, max_length=24, **NO_CHECKPOINTING)
# EP's centered-nudging bias is O(β²), with a large constant on this tiny random Llama: per batch, EP vs float64
# backprop measured 1.8e-3 at β = 1e-3, 1.8e-5 at 1e-4 (tests/parity.py's β), 2.4e-7 at 1e-5. So β = 1e-5 here.
BETA = 1e-5


def tokenizer() -> PreTrainedTokenizerFast:
    vocab = {w: i for i, w in enumerate(SPECIALS + WORDS)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>", model_max_length=64)


def sentence(rng: random.Random, low: int, high: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(low, high)))


def text_data(n: int = 8, seed: int = 0) -> Dataset:
    """Language-modeling rows of 2–14 words (uneven token counts per batch)."""
    rng = random.Random(seed)
    return Dataset.from_dict({"text": [sentence(rng, 2, 14) for _ in range(n)]})


def prompt_completion_data(n: int = 8, seed: int = 0) -> Dataset:
    """Prompt-completion rows: SFTTrainer trains on the completion only (completion_only_loss defaults on)."""
    rng = random.Random(seed)
    return Dataset.from_dict({"prompt": [sentence(rng, 2, 9) for _ in range(n)],
                              "completion": [sentence(rng, 1, 6) for _ in range(n)]})


def llama(seed: int = 0):
    return tiny_model("llama", "causal-lm", seed=seed).double()


def lora_llama():
    """The tiny Llama with LoRA on q/v (peft), the same adapter initialisation each call."""
    peft = pytest.importorskip("peft")
    base = llama()
    torch.manual_seed(1)
    return peft.get_peft_model(base, peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))


def sft_update(method: str, dataset, out, ep_trainer=EPSFTTrainer, setup=None, model=llama, **overrides):
    return train_update(method, model(), dataset, out, {"processing_class": tokenizer()}, ep_trainer=ep_trainer,
                        setup=setup, backprop_trainer=SFTTrainer, ep_args=EPSFTConfig, backprop_args=SFTConfig,
                        **{**SFT, "ep_beta": BETA, **overrides})


def sft_parity(tmp_path, dataset, ep_trainer=EPSFTTrainer, setup=None, model=llama, **overrides):
    ep, ep_log = sft_update("ep", dataset, tmp_path / "ep", ep_trainer, setup, model, **overrides)
    bp, bp_log = sft_update("backprop", dataset, tmp_path / "bp", model=model, **overrides)
    difference = relative_difference(ep, bp)
    print(f"SFT {dataset.column_names} {model.__name__} {overrides}: relative update difference "
          f"{ep_trainer.__name__} vs SFTTrainer {difference:.3g}")
    return difference, ep_log, bp_log


def steps(log: list[dict]) -> list[dict]:
    return [h for h in log if "loss" in h]


# Two optimizer steps of two accumulated batches of two rows: SFTTrainer normalizes by the window's token count.
ACCUMULATED = dict(per_device_train_batch_size=2, gradient_accumulation_steps=2, max_steps=2)
CASES = {
    "text": (text_data, {}),
    "text, packed": (text_data, dict(packing=True)),  # bfd packing: padding-free rows, position_ids restart per text
    "completion only": (prompt_completion_data, {}),
    "completion only, packed": (prompt_completion_data, dict(packing=True)),
    "dft loss": (text_data, dict(loss_type="dft")),
}


def batch_checker(case: str):
    """``setup`` for the EP run: the batches are what the case claims (packed rows, masked prompts)."""

    def check(trainer):
        batches = list(trainer.get_train_dataloader())
        labelled = sum(int((b["labels"] != -100).sum()) for b in batches)
        tokens = sum(b["input_ids"].numel() for b in batches)
        if "packed" in case:  # padding-free rows: several texts each, positions restarting at each
            assert all("attention_mask" not in b for b in batches)
            starts = [int((b["position_ids"] == 0).sum()) for b in batches]
            assert max(starts) >= 2, "no row holds two texts: the case would not test packing"
            unlabelled = sum(starts)  # each text's first token has no label in a packed row
        else:
            unlabelled = sum(int((b["attention_mask"] == 0).sum()) for b in batches)  # padding
        assert (labelled < tokens - unlabelled) == ("completion" in case), "prompt tokens are labelled or vice versa"

    return check


@pytest.mark.parametrize("case", list(CASES))
def test_update_and_logged_loss_equal_sfttrainers(tmp_path, case):
    data, overrides = CASES[case]
    overrides = {**ACCUMULATED, **overrides}
    if overrides.get("packing"):  # a packed row holds several texts: fewer, longer rows
        overrides.update(per_device_train_batch_size=1, max_length=16)
    difference, ep_log, bp_log = sft_parity(tmp_path, data(12), setup=batch_checker(case), **overrides)
    assert difference <= BOUND
    assert len(steps(bp_log)) == 2
    ep_steps, bp_steps = steps(ep_log), steps(bp_log)
    # the loss SFTTrainer logs, and its metrics of the same (first) state, recorded once per step
    assert [h["loss"] for h in ep_steps] == pytest.approx([h["loss"] for h in bp_steps], rel=1e-5)
    for key in ("entropy", "mean_token_accuracy"):
        assert ep_steps[0][key] == pytest.approx(bp_steps[0][key], rel=1e-5), key
    assert [h["num_tokens"] for h in ep_steps] == [h["num_tokens"] for h in bp_steps]
    assert all(k in ep_steps[0] for k in ("ep_energy", "ep_settle_steps", "ep_audit_cosine"))
    assert not any(k.startswith("ep_") for h in bp_steps for k in h)


def test_lora_update_equals_sfttrainers(tmp_path):
    """LoRA (a peft model given to the trainer): only the adapters move, as SFTTrainer moves them."""
    difference, *_ = sft_parity(tmp_path, prompt_completion_data(12), model=lora_llama, **ACCUMULATED)
    assert difference <= BOUND


def test_negative_control_positive_nudging_at_large_beta_fails_the_bound(tmp_path):
    """The comparison detects a biased EP gradient (one-sided nudging, β = 0.5)."""
    difference, *_ = sft_parity(tmp_path, text_data(12), **ACCUMULATED, ep_nudging="positive", ep_beta=0.5)
    assert difference > 10 * BOUND


class ModelLossEPSFTTrainer(EPSFTTrainer):
    """What nudging with the model's own loss would do: blind to SFTTrainer's loss (here its DFT weighting)."""

    def _trainer_loss(self, model, stack, inputs, num_items_in_batch):
        return lambda s: stack.output(s, labels=inputs["labels"], num_items_in_batch=num_items_in_batch)["loss"]


def test_negative_control_the_models_own_loss_is_not_sfts_loss(tmp_path):
    """With ``loss_type="dft"`` SFTTrainer's loss is not the model's: nudging with the model's own loss is percents
    away from SFTTrainer's update, so the parity test above can fail when EP does not nudge with SFT's loss."""
    difference, *_ = sft_parity(tmp_path, text_data(12), ModelLossEPSFTTrainer, **ACCUMULATED, loss_type="dft")
    assert difference > 100 * BOUND


class EveryCallRecordsEPSFTTrainer(EPSFTTrainer):
    """SFTTrainer's metrics recorded at every evaluation of its loss (free state, each nudged phase, the audit)."""

    def _trainer_loss(self, model, stack, inputs, num_items_in_batch):
        return EPTrainer._trainer_loss(self, model, stack, inputs, num_items_in_batch)


def count_gathers(counts: list):
    """``setup``: count the trainer's ``gather_for_metrics`` calls (the collectives SFTTrainer's metrics make)."""

    def setup(trainer):
        gather = trainer.accelerator.gather_for_metrics

        def counted(*a, **kw):
            counts.append(1)
            return gather(*a, **kw)

        trainer.accelerator.gather_for_metrics = counted

    return setup


def test_metrics_gather_across_processes_as_often_as_sfttrainers(tmp_path):
    """EP evaluates SFT's loss several times a step (free state, ±β phases over 3 sweeps, the audit's reference),
    but its metrics make SFTTrainer's collectives once per step, as backprop's SFTTrainer does: under DDP, ranks
    that settle for different numbers of steps would otherwise wait on each other's gathers forever."""
    ep, bp = [], []
    sft_update("ep", text_data(12), tmp_path / "ep", setup=count_gathers(ep), ep_audit_steps=1, **ACCUMULATED)
    train_update("backprop", llama(), text_data(12), tmp_path / "bp", {"processing_class": tokenizer()},
                 setup=count_gathers(bp), backprop_trainer=SFTTrainer, backprop_args=SFTConfig, **SFT, **ACCUMULATED)
    assert len(bp) > 0 and len(ep) == len(bp)


def test_negative_control_metrics_recorded_at_every_loss_evaluation(tmp_path):
    """Without recording SFT's metrics once per step, ``num_tokens`` counts each step's tokens several times and
    the metrics gather across processes several times a step (the two tests above can fail)."""
    gathers = []
    _, ep_log, bp_log = sft_parity(tmp_path, text_data(12), EveryCallRecordsEPSFTTrainer, count_gathers(gathers),
                                   **ACCUMULATED)
    assert steps(ep_log)[-1]["num_tokens"] >= 2 * steps(bp_log)[-1]["num_tokens"]
    sft_gathers = 4 * ACCUMULATED["gradient_accumulation_steps"] * len(steps(bp_log))  # 4 per micro-batch
    assert len(gathers) >= 2 * sft_gathers


def test_trains_a_few_steps_at_the_defaults_logging_ep_keys(tmp_path):
    """EPSFTConfig's own defaults (scale-free β, the audit), float32, SFT's evaluation and a checkpoint on the way."""
    torch.manual_seed(0)
    args = EPSFTConfig(output_dir=str(tmp_path), max_steps=4, per_device_train_batch_size=4, logging_steps=1,
                       learning_rate=1e-2, report_to="none", use_cpu=True, bf16=False, save_steps=2,
                       eval_strategy="steps", eval_steps=2, disable_tqdm=True, ep_audit_steps=2)
    trainer = EPSFTTrainer(model=tiny_model("llama", "causal-lm"), args=args, train_dataset=text_data(16),
                           eval_dataset=text_data(4, seed=1), processing_class=tokenizer())
    trainer.train()
    evaluated = [h for h in trainer.state.log_history if "eval_loss" in h]
    assert len(evaluated) == 2 and all({"eval_entropy", "eval_mean_token_accuracy"} <= h.keys() for h in evaluated)
    logged = steps(trainer.state.log_history)
    assert len(logged) == 4
    for h in logged:
        assert torch.isfinite(torch.tensor(h["loss"]))
        assert {"ep_energy", "ep_settle_steps", "entropy", "mean_token_accuracy", "num_tokens"} <= h.keys()
    audited = [h for h in logged if "ep_audit_cosine" in h]
    assert audited and all(h["ep_audit_cosine"] > 0.99 for h in audited)
    assert logged[-1]["loss"] < logged[0]["loss"]
    assert (tmp_path / "checkpoint-2" / "model.safetensors").is_file()
    assert "Equilibrium Propagation" in (tmp_path / "README.md").read_text()


@pytest.mark.parametrize("args_class", [EPTrainingArguments, SFTConfig])
def test_model_path_and_other_arguments(tmp_path, args_class):
    """A model given by path (loaded as SFTTrainer loads one) and EPTrainingArguments or SFTConfig (converted to
    EPSFTConfig, as SFTTrainer converts TrainingArguments to SFTConfig; SFTConfig's tokens kept)."""
    path = tmp_path / "tiny-llama"
    tiny_model("llama", "causal-lm").save_pretrained(path)
    tokenizer().save_pretrained(path)
    extra = dict(bf16=False, eos_token="</s>", **NO_CHECKPOINTING) if args_class is SFTConfig else {}
    args = args_class(output_dir=str(tmp_path / "out"), max_steps=1, per_device_train_batch_size=4, report_to="none",
                      use_cpu=True, logging_steps=1, save_strategy="no", disable_tqdm=True, **extra)
    trainer = EPSFTTrainer(model=str(path), args=args, train_dataset=text_data(4))
    assert isinstance(trainer.args, EPSFTConfig)
    if args_class is SFTConfig:
        assert trainer.args.eos_token == "</s>" and trainer.args.pad_token is None
    trainer.train()
    assert "ep_energy" in steps(trainer.state.log_history)[0]


def test_the_wrong_class_order_is_refused(tmp_path):
    """``class X(SFTTrainer, EPTrainer)`` would train by SFTTrainer's backprop: refused, naming the order that works."""

    class SFTEP(SFTTrainer, EPTrainer):
        pass

    args = EPSFTConfig(output_dir=str(tmp_path), report_to="none", use_cpu=True, bf16=False)
    with pytest.raises(TypeError) as info:
        SFTEP(model=llama(), args=args, train_dataset=text_data(4), processing_class=tokenizer())
    message = str(info.value)
    print(message)
    assert "would train by backprop, not EP" in message
    assert "SFTTrainer.compute_loss ahead of EPTrainer's" in message
    assert "class SFTEP(EPTrainer, SFTTrainer)" in message
    assert "mep_hf.trl.EPSFTTrainer" in message


@pytest.mark.filterwarnings("ignore:`gradient_checkpointing` is deprecated:FutureWarning")  # SFTConfig's default
def test_what_ep_cannot_give_is_refused_by_name(tmp_path):
    args = EPSFTConfig(output_dir=str(tmp_path), report_to="none", use_cpu=True, bf16=False)
    assert not args.gradient_checkpointing  # SFTConfig's default is on; EP's is off
    with pytest.raises(ValueError, match="EPTrainer cannot honour gradient_checkpointing=True"):
        EPSFTTrainer(model=llama(), args=SFTConfig(output_dir=str(tmp_path), report_to="none", use_cpu=True),
                     train_dataset=text_data(4), processing_class=tokenizer())
    peft = pytest.importorskip("peft")
    prompt_tuning = peft.PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=2)
    with pytest.raises(TypeError, match="PromptTuningConfig is prompt learning"):
        EPSFTTrainer(model=llama(), args=args, train_dataset=text_data(4), processing_class=tokenizer(),
                     peft_config=prompt_tuning)


def test_without_trl_the_import_error_says_what_to_install():
    code = "import sys; sys.modules['trl'] = None\ntry:\n    import mep_hf.trl\nexcept ImportError as e:\n    print(e)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert "pip install 'mep-hf[trl]'" in out.stdout, out.stderr[-2000:]
