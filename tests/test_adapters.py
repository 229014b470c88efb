"""Stock Hugging Face models under EP through the family adapters: every model type x head of the registry.

* The free phase is the stock forward (logits and loss equal), and the float64 EP gradient (centered, beta=1e-5,
  3 sweeps) equals backprop of the stock forward: per-tensor cosine >= 0.9999, relative error <= 1e-4. A negative
  control (positive nudging at beta=1e-2) fails that bound.
* Dropout: with one mask per step, EP is exact in train mode; fresh masks per call are not.
* LoRA (peft): the same bound on the adapter weights; frozen weights get no gradient; save/load with peft.
* Every model type x head trains inside EPTrainer; bf16 autocast + gradient accumulation on a decoder and an encoder.
* Unsupported models and heads fail at EPTrainer.__init__ with the class named and the supported list shown.
* The README's supported-models table is the registry.
"""

from __future__ import annotations

import inspect
import re
import sys
import types
from pathlib import Path

import pytest
import torch
from datasets import Dataset
from torch import nn
from transformers import AutoModelForCausalLM, GPT2LMHeadModel, Trainer, TrainingArguments

import mep_hf.energies.layered as layered
from mep_hf import EPTrainer, SettleConfig, free_phase, nudged_phases
from mep_hf.adapters import FAMILIES, MODEL_TYPES, ModelType, prepare_ep_model, register_adapter_family
from mep_hf.adapters import register_model_type, supported_models
from mep_hf.adapters.check import backprop_gradients, check_against_backprop, ep_gradients, mismatches
from mep_hf.adapters.heads import Head
from mep_hf.energies.layered import Contrast
from tests.adapter_models import CASES, tiny_batch, tiny_model
from tests.conftest import toy_args

BETA, SWEEPS = 1e-5, 3
ROOT = Path(__file__).resolve().parents[1]


def stack_output(model, batch):
    """The stack's output state and its loss: the free phase, block by block."""
    stack = model.ep_stack(**batch)
    s = stack.inputs
    for block in stack.blocks:
        s = block(s)
    return s, stack.loss(s)


# ------------------------------------------------------------------------------------------------ exactness
@pytest.mark.parametrize("model_type, task", CASES, ids=[f"{t}-{k}" for t, k in CASES])
def test_free_phase_is_the_stock_forward_and_ep_gradient_is_backprop(model_type, task):
    """Float64, centered beta=1e-5, 3 sweeps: per tensor cosine >= 0.9999, relative error <= 1e-4 against backprop
    of the stock forward; the stack's output is the forward's logits and loss (check_against_backprop)."""
    model = prepare_ep_model(tiny_model(model_type, task).double()).eval()
    batch = tiny_batch(model_type, task, model)
    reference = model(**batch)
    logits, loss = stack_output(model, batch)
    torch.testing.assert_close(logits, reference.logits, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(loss, reference.loss, rtol=1e-12, atol=1e-12)
    assert check_against_backprop(model, batch, beta=BETA, sweeps=SWEEPS) == []


@pytest.mark.parametrize("model_type, task", [("llama", "sequence-classification"), ("qwen2", "token-classification"),
                                              ("gpt2", "sequence-classification")])
def test_decoder_classifiers_with_left_padding(model_type, task):
    """Last-token pooling finds each row's last real token under left padding too."""
    model = prepare_ep_model(tiny_model(model_type, task).double()).eval()
    batch = tiny_batch(model_type, task, model, left_padding=True)
    reference = model(**batch)
    torch.testing.assert_close(stack_output(model, batch)[0], reference.logits, rtol=1e-12, atol=1e-12)
    assert mismatches(model, ep_gradients(model, batch, beta=BETA), backprop_gradients(model, batch)) == []


@pytest.mark.parametrize("model_type, task", [("llama", "causal-lm"), ("bert", "masked-lm"),
                                              ("vit", "image-classification"), ("gpt2", "sequence-classification")])
def test_negative_control_fails_the_bound(model_type, task):
    """One-sided nudging at a large beta carries an O(beta) bias: the same check must reject it."""
    model = prepare_ep_model(tiny_model(model_type, task).double()).eval()
    batch = tiny_batch(model_type, task, model)
    failing = mismatches(model, ep_gradients(model, batch, beta=1e-2, nudging="positive", sweeps=1),
                         backprop_gradients(model, batch))
    assert failing != []


def test_problem_types_match_the_stock_loss():
    """BERT-style classifiers compute regression / multi-label losses inline; the head reproduces them."""
    for labels, num_labels, problem in [(torch.rand(3), 1, "regression"), (torch.rand(3, 3).round(), 3, None)]:
        model = prepare_ep_model(tiny_model("bert", "sequence-classification", num_labels=num_labels).double()).eval()
        model.config.problem_type = problem
        batch = {**tiny_batch("bert", "sequence-classification", model), "labels": labels.double()}
        torch.testing.assert_close(stack_output(model, batch)[1], model(**batch).loss, rtol=1e-12, atol=1e-12)
        assert check_against_backprop(model, batch, beta=BETA) == []


# ------------------------------------------------------------------------------------------------ dropout
@pytest.mark.parametrize("model_type, task", [("gpt2", "causal-lm"), ("bert", "sequence-classification"),
                                              ("llama", "token-classification")])
def test_dropout_one_mask_per_step_keeps_ep_exact(model_type, task):
    model = prepare_ep_model(tiny_model(model_type, task, attention_dropout=0.2).double()).train()
    batch = tiny_batch(model_type, task, model)
    stack = model.ep_stack(**batch)
    # Dropout is on: the stack in train mode differs from eval mode ...
    model.eval()
    eval_logits = stack_output(model, batch)[0]
    model.train()

    def run():
        s = stack.inputs
        for block in stack.blocks:
            s = block(s)
        return s

    first = run()
    assert not torch.allclose(first, eval_logits)
    # ... and every call of the step's blocks draws the same masks, whatever the global RNG does in between.
    torch.rand(5)
    torch.testing.assert_close(run(), first, rtol=0, atol=0)
    assert not torch.equal(stack_output(model, batch)[0], first)  # the next step draws new masks
    # The contrast replays the masks of the step whose phases it re-evaluates: EP = backprop of that sub-network.
    stack = model.ep_stack(**batch)
    params = [p for p in model.parameters() if p.requires_grad]
    s = stack.inputs
    for block in stack.blocks:
        s = block(s)
    backprop = torch.autograd.grad(stack.loss(s), params, allow_unused=True)
    phases = nudged_phases(stack, free_phase(stack), BETA, "centered", SettleConfig(steps=SWEEPS))
    ep = torch.autograd.grad(model(**batch, ep_contrast=Contrast(phases)), params, allow_unused=True)
    assert mismatches(model, ep, backprop) == []


def test_dropout_with_fresh_masks_breaks_ep(monkeypatch):
    """Negative control: without the shared mask (a new mask at every block call), the EP gradient is wrong."""
    import mep_hf.adapters.encoder as encoder

    model = prepare_ep_model(tiny_model("bert", "sequence-classification").double()).train()
    batch = tiny_batch("bert", "sequence-classification", model)
    monkeypatch.setattr(encoder, "step_seeds", lambda *a: None)
    backprop = backprop_gradients(model, batch, loss=stack_output(model, batch)[1])
    assert mismatches(model, ep_gradients(model, batch, beta=BETA), backprop) != []


def test_eval_mode_step_says_dropout_is_off(caplog):
    import logging

    from transformers.utils import logging as hf_logging

    model = prepare_ep_model(tiny_model("gpt2", "causal-lm")).eval()
    batch = tiny_batch("gpt2", "causal-lm", model, dtype=torch.float32)
    hf_logging.enable_propagation()
    try:
        with caplog.at_level(logging.WARNING):
            ep_gradients(model, batch, beta=1e-2, sweeps=1)
    finally:
        hf_logging.disable_propagation()
    assert "dropout" in caplog.text and "OFF" in caplog.text and "same network" in caplog.text


def test_eptrainer_steps_share_one_dropout_mask_per_step(tmp_path, monkeypatch):
    """Inside EPTrainer.train(): the EP step runs in train mode (dropout on), each step draws a fresh mask, and the
    contrast replays the mask of the phases it re-evaluates."""
    import mep_hf.adapters.encoder as encoder

    calls = []
    draw = encoder.step_seeds

    def spy(model, n_blocks, replay):
        seeds = draw(model, n_blocks, replay)
        calls.append((model.training, replay, None if seeds is None else seeds[0]))
        return seeds

    monkeypatch.setattr(encoder, "step_seeds", spy)
    model = tiny_model("bert", "sequence-classification", hidden_dropout_prob=0.3)
    data = lm_rows(model, n=16, task="sequence-classification", model_type="bert")
    # Audit off: its backprop step replays the masks once more (tests/test_defaults.py checks that it does).
    args = toy_args(tmp_path, max_steps=4, per_device_train_batch_size=8, ep_beta=1e-2, ep_nudging="centered",
                    ep_settle_steps=2, ep_audit_steps=0)
    before = eval_loss(model, data)
    EPTrainer(model=model, args=args, train_dataset=data).train()
    assert eval_loss(model, data) < before
    assert len(calls) == 8 and all(training for training, _, _ in calls)
    fresh, replays = calls[0::2], calls[1::2]
    assert [r for _, r, _ in fresh] == [False] * 4 and [r for _, r, _ in replays] == [True] * 4
    assert [s for _, _, s in fresh] == [s for _, _, s in replays]  # the contrast replays its step's masks
    assert len({s for _, _, s in fresh}) == 4  # and every step draws new ones


# ------------------------------------------------------------------------------------------------ LoRA (peft)
def lora_model(model_type, task, dtype=torch.float64):
    from peft import LoraConfig, TaskType, get_peft_model

    targets = {"llama": ["q_proj", "v_proj"], "bert": ["query", "value"]}[model_type]
    task_type = {"causal-lm": TaskType.CAUSAL_LM, "sequence-classification": TaskType.SEQ_CLS}[task]
    base = tiny_model(model_type, task).to(dtype)
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=targets, task_type=task_type))
    torch.manual_seed(1)
    for name, p in model.named_parameters():
        if "lora_B" in name:  # B starts at zero, which would leave A's gradient at zero: a weak test
            nn.init.normal_(p, std=0.1)
    return model


@pytest.mark.parametrize("model_type, task", [("llama", "causal-lm"), ("bert", "sequence-classification")])
def test_lora_gradients_match_backprop(model_type, task):
    model = prepare_ep_model(lora_model(model_type, task)).eval()
    batch = tiny_batch(model_type, task, model)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n or "modules_to_save" in n for n in trainable)
    assert check_against_backprop(model, batch, beta=BETA) == []


def test_lora_trains_only_adapter_weights_and_round_trips_through_peft(tmp_path, monkeypatch):
    from peft import PeftModel

    model = lora_model("llama", "causal-lm", torch.float32)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    # Every gradient the EP contrast forms goes through accumulate: record which tensors got one.
    got_gradient = set()
    accumulate = layered.accumulate

    def recording(grads, pairs):
        got_gradient.update(id(p) for p, _ in pairs)
        return accumulate(grads, pairs)

    monkeypatch.setattr(layered, "accumulate", recording)
    data = lm_rows(model, n=16)
    trainer = EPTrainer(model=model, args=toy_args(tmp_path, max_steps=4, learning_rate=5e-2, ep_beta=1e-3,
                                                   ep_nudging="centered", ep_settle_steps=2), train_dataset=data)
    before = eval_loss(model, data)
    trainer.train()
    assert eval_loss(model, data) < before
    for name, p in model.named_parameters():
        if not p.requires_grad:
            assert p.grad is None and id(p) not in got_gradient, name  # no gradient, not even a transient one
            torch.testing.assert_close(p, frozen[name], rtol=0, atol=0)
    assert got_gradient == {id(p) for p in model.parameters() if p.requires_grad}
    model.save_pretrained(tmp_path / "adapter")
    assert (tmp_path / "adapter" / "adapter_model.safetensors").exists()
    loaded = PeftModel.from_pretrained(tiny_model("llama", "causal-lm"), tmp_path / "adapter").eval()
    model.eval()
    torch.testing.assert_close(loaded(**data[:4]).logits, model(**data[:4]).logits)


def test_prompt_learning_peft_is_refused():
    from peft import PromptTuningConfig, TaskType, get_peft_model

    model = get_peft_model(tiny_model("llama", "causal-lm"), PromptTuningConfig(task_type=TaskType.CAUSAL_LM,
                                                                                num_virtual_tokens=2))
    with pytest.raises(TypeError, match="prompt learning"):
        prepare_ep_model(model)


# ------------------------------------------------------------------------------------------------ Trainer
def lm_rows(model, n=16, task="causal-lm", model_type="llama"):
    """``n`` rows of a tiny batch as a float32 dataset."""
    batch = tiny_batch(model_type, task, model, batch=n, dtype=torch.float32)
    return Dataset.from_dict({k: v.numpy() for k, v in batch.items()}).with_format("torch")


def eval_loss(model, data) -> float:
    was = model.training
    model.eval()
    with torch.no_grad():
        loss = float(model(**data[:]).loss)
    model.train(was)
    return loss


@pytest.mark.parametrize("model_type, task", CASES, ids=[f"{t}-{k}" for t, k in CASES])
def test_every_model_and_head_trains_in_eptrainer(model_type, task, tmp_path):
    model = tiny_model(model_type, task)
    data = lm_rows(model, n=8, task=task, model_type=model_type)
    args = toy_args(tmp_path, max_steps=4, per_device_train_batch_size=8, learning_rate=1e-2, logging_steps=2,
                    ep_beta=1e-3, ep_nudging="centered", ep_settle_steps=2)
    trainer = EPTrainer(model=model, args=args, train_dataset=data)
    before = eval_loss(model, data)
    trainer.train()
    assert eval_loss(model, data) < before
    assert all("ep_energy" in h for h in trainer.state.log_history if "loss" in h)


def plain_args(tmp_path, **overrides) -> TrainingArguments:
    """conftest.toy_args without the EP fields: a plain Trainer with the same settings."""
    ep_args = toy_args(tmp_path, **overrides)
    fields = {k: getattr(ep_args, k) for k in ("output_dir", "per_device_train_batch_size", "learning_rate",
                                               "max_steps", "logging_steps", "save_strategy", "report_to", "use_cpu",
                                               "seed", "data_seed", "disable_tqdm", "gradient_accumulation_steps",
                                               "bf16", "optim", "max_grad_norm")}
    return TrainingArguments(**fields)


@pytest.mark.parametrize("model_type, task", [("llama", "causal-lm"), ("bert", "sequence-classification")])
def test_bf16_autocast_and_gradient_accumulation(model_type, task, tmp_path):
    """Under bf16 autocast, with 2 micro-batches per step, EP trains, and one step's update (plain SGD) points
    where backprop's does under the same settings (dropout off, so that both train the same deterministic network)."""
    no_dropout = {"bert": dict(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)}.get(model_type, {})
    data = lm_rows(tiny_model(model_type, task), n=16, task=task, model_type=model_type)
    common = dict(per_device_train_batch_size=4, gradient_accumulation_steps=2, bf16=True, learning_rate=1e-2,
                  logging_steps=2)
    ep = dict(ep_beta=1e-2, ep_nudging="centered", ep_settle_steps=2)
    model = tiny_model(model_type, task)
    trainer = EPTrainer(model=model, args=toy_args(tmp_path / "ep", max_steps=6, **common, **ep), train_dataset=data)
    before = eval_loss(model, data)
    trainer.train()
    assert eval_loss(model, data) < before
    assert trainer.state.global_step == 6 and trainer.accelerator.mixed_precision == "bf16"
    deltas = []
    for cls, args in [(EPTrainer, toy_args(tmp_path / "ep1", max_steps=1, optim="sgd", **common, **ep)),
                      (Trainer, plain_args(tmp_path / "bp1", max_steps=1, optim="sgd", **common))]:
        m = tiny_model(model_type, task, **no_dropout)
        start = [p.detach().clone() for p in m.parameters()]
        cls(model=m, args=args, train_dataset=data).train()
        deltas.append(torch.cat([(p.detach() - s).flatten() for p, s in zip(m.parameters(), start)]))
    assert float(nn.functional.cosine_similarity(deltas[0], deltas[1], dim=0)) > 0.99


def test_train_leaves_the_mode_trainer_leaves(tmp_path):
    modes = []
    for cls, make_args in ((Trainer, plain_args), (EPTrainer, toy_args)):
        model = tiny_model("bert", "sequence-classification").eval()
        data = lm_rows(model, n=8, task="sequence-classification", model_type="bert")
        cls(model=model, args=make_args(tmp_path / cls.__name__, max_steps=1), train_dataset=data).train()
        modes.append(model.training)
    assert modes[0] == modes[1]


def test_adapted_gpt2_round_trips_through_auto_classes(tmp_path):
    model = tiny_model("gpt2", "causal-lm")
    before = inspect.signature(model.forward)
    adapted = prepare_ep_model(model)
    assert adapted is model and prepare_ep_model(model) is model  # in place, idempotent
    assert inspect.signature(model.forward) == before and type(model) is GPT2LMHeadModel
    ids = torch.randint(3, 48, (2, 6))
    assert model(ids, labels=ids).logits.shape == (2, 6, 48)  # positional arguments still reach the stock forward
    assert model.lm_head.weight is model.transformer.wte.weight  # tied: one parameter in the first and last block
    EPTrainer(model=model, args=toy_args(tmp_path, max_steps=2), train_dataset=lm_rows(model, 8, "causal-lm", "gpt2")).train()
    model.save_pretrained(tmp_path / "gpt2")
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "gpt2")
    assert type(loaded) is GPT2LMHeadModel and loaded.lm_head.weight is loaded.transformer.wte.weight
    for k, v in model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[k], v, rtol=0, atol=0, msg=k)


# ------------------------------------------------------------------------------------------------ refusals
class _Exploding(torch.utils.data.Dataset):
    """A dataset that fails if anything touches it: refusals must come before any data work."""

    def __len__(self):
        raise AssertionError("the dataset was touched before the model was refused")

    def __getitem__(self, i):
        raise AssertionError("the dataset was touched before the model was refused")


def test_unsupported_model_type_fails_at_init_and_lists_what_is(tmp_path):
    from transformers import CLIPConfig, CLIPModel

    small = dict(hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16)
    model = CLIPModel(CLIPConfig(text_config=dict(vocab_size=32, bos_token_id=0, eos_token_id=1, **small),
                                 vision_config=dict(image_size=8, patch_size=4, **small), projection_dim=8))
    with pytest.raises(TypeError, match=r"CLIPModel cannot be split into EP blocks.*"
                                        r"model_type='clip'.*llama \(LlamaForCausalLM"):
        EPTrainer(model=model, args=toy_args(tmp_path), train_dataset=_Exploding())


def test_a_head_the_table_does_not_list_is_adapted_by_its_structure(tmp_path):
    """The table's Llama row lists no QA head; the structural adapter (mep_hf/adapters/traced.py) takes it, so the
    model is adapted at init instead of refused (its gradient: tests/test_structural_adapters.py)."""
    from transformers import LlamaConfig, LlamaForQuestionAnswering

    model = LlamaForQuestionAnswering(LlamaConfig(vocab_size=32, hidden_size=8, num_hidden_layers=1,
                                                  num_attention_heads=2, intermediate_size=16, num_labels=2))
    EPTrainer(model=model, args=toy_args(tmp_path))
    assert callable(getattr(model, "ep_stack", None))


def test_overridden_forward_and_bad_inputs_are_refused():
    from transformers import LlamaForCausalLM

    class Custom(LlamaForCausalLM):
        def forward(self, *args, **kwargs):
            return super().forward(*args, **kwargs)

    base = tiny_model("llama", "causal-lm")
    with pytest.raises(TypeError, match="overrides LlamaForCausalLM.forward"):
        prepare_ep_model(Custom(base.config))

    class Plain(LlamaForCausalLM):  # a subclass that keeps the stock forward is fine
        pass

    assert callable(prepare_ep_model(Plain(base.config)).ep_stack)
    model = prepare_ep_model(base)
    ids = torch.randint(3, 48, (2, 6))
    for bad, match in [({"use_cache": True}, "cache"), ({"inputs_embeds": torch.zeros(2, 6, 16)}, "input_ids"),
                       ({"logits_to_keep": 1}, "logits_to_keep")]:
        with pytest.raises(TypeError, match=match):
            model.ep_stack(input_ids=ids, labels=ids, **bad)
    with pytest.raises(ValueError, match="needs `labels`"):
        model.ep_stack(input_ids=ids)
    with pytest.raises(TypeError, match="cross-attention"):
        prepare_ep_model(tiny_model("bert", "masked-lm", is_decoder=True, add_cross_attention=True))


def test_registries_refuse_duplicates():
    with pytest.raises(ValueError, match="already has an EP adapter row"):
        register_model_type("llama", MODEL_TYPES["llama"])

    class Impostor:
        name, Layout = "decoder", object

        @staticmethod
        def check(*a): ...

        @staticmethod
        def ep_stack(*a): ...

    with pytest.raises(ValueError, match="already registered"):
        register_adapter_family(Impostor)
    with pytest.raises(ValueError, match="unknown head operation"):
        Head("causal-lm", (":nope",), "lm")
    with pytest.raises(ValueError, match="one head per task"):
        ModelType("decoder", {}, (MODEL_TYPES["llama"].heads[0],) * 2)


# ------------------------------------------------------------------------------------------------ documentation
def test_readme_table_is_the_registry():
    """The README's supported-models table lists exactly the registry's model types, families and classes."""
    text = (ROOT / "README.md").read_text()
    section = re.split(r"\n#", text.split("### Supported stock models", 1)[1], maxsplit=1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    table = {}
    for line in rows:
        cells = [c.strip() for c in line.strip("|").split("|")]
        table[cells[0].strip("`")] = (cells[1], sorted(re.findall(r"`(\w+)`", cells[2])))
    expected = {t: (MODEL_TYPES[t].family, sorted(c)) for t, c in supported_models().items()}
    assert table == expected
    assert len(table) >= 12


def test_adding_a_family_example_runs():
    """The worked example of docs/adding_a_family.md, run as written (the registries are restored afterwards)."""
    doc = (ROOT / "docs" / "adding_a_family.md").read_text()
    code = "\n".join(re.findall(r"```python\n(.*?)```", doc, flags=re.S))
    saved = [(registry, dict(registry)) for registry in (MODEL_TYPES, FAMILIES)]
    module = types.ModuleType("adding_a_family")  # dataclasses look their module up in sys.modules
    sys.modules[module.__name__] = module
    try:
        exec(compile(code, "docs/adding_a_family.md", "exec"), module.__dict__)
        assert "convnext" in MODEL_TYPES and "stablelm" in MODEL_TYPES
    finally:
        del sys.modules[module.__name__]
        for registry, before in saved:
            registry.clear()
            registry.update(before)
