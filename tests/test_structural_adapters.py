"""Models by structure (mep_hf/adapters/traced.py): stock models outside the model-type table, and heads the table
does not list (question answering, multiple choice), trained by EP with no adapter code of their own.

Each case is built from a tiny config (nothing is downloaded) and checked as the table's rows are
(``check_against_backprop``: the free phase reproduces the forward's outputs and loss, and EP's gradient equals
backprop's tensor by tensor in float64, cosine >= 0.9999 and relative error <= 1e-4)."""

from __future__ import annotations

import contextlib

import pytest
import torch
import transformers
from transformers import AutoConfig

from mep_hf import EPTrainer
from mep_hf.adapters import MODEL_TYPES, prepare_ep_model, supported_classes
from mep_hf.adapters.check import backprop_gradients, check_against_backprop, ep_gradients, mismatches
from tests.conftest import toy_args

COMMON = dict(vocab_size=48, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
              max_position_embeddings=32, pad_token_id=0, bos_token_id=1, eos_token_id=2, num_labels=3)
# (model type, class, config overrides): none of these types is a row of the table, or the head is not listed.
CASES = [
    ("opt", "OPTForCausalLM", dict(ffn_dim=32, word_embed_proj_dim=16)),
    ("falcon", "FalconForCausalLM", {}),  # parallel attention
    ("bloom", "BloomForCausalLM", {}),  # ALiBi
    ("gptj", "GPTJForCausalLM", dict(n_embd=16, n_layer=2, n_head=2, rotary_dim=4)),
    ("codegen", "CodeGenForCausalLM", dict(n_embd=16, n_layer=2, n_head=2, rotary_dim=4)),
    ("gpt_bigcode", "GPTBigCodeForCausalLM", dict(n_embd=16, n_layer=2, n_head=2)),
    ("granite", "GraniteForCausalLM", {}),
    ("cohere", "CohereForCausalLM", {}),
    ("stablelm", "StableLmForCausalLM", dict(num_key_value_heads=2)),
    ("gemma3_text", "Gemma3ForCausalLM", dict(head_dim=8, num_key_value_heads=1)),
    ("persimmon", "PersimmonForCausalLM", {}),
    ("mpt", "MptForCausalLM", dict(d_model=16, n_heads=2, n_layers=2)),
    ("biogpt", "BioGptForCausalLM", {}),
    ("nemotron", "NemotronForCausalLM", dict(num_key_value_heads=1)),
    ("glm", "GlmForCausalLM", dict(num_key_value_heads=1, head_dim=8)),
    ("helium", "HeliumForCausalLM", dict(num_key_value_heads=1, head_dim=8)),
    ("mamba", "MambaForCausalLM", {}),  # a state-space model: its mixer layers are the blocks
    ("deberta-v2", "DebertaV2ForSequenceClassification", {}),
    ("modernbert", "ModernBertForSequenceClassification", {}),
    ("roformer", "RoFormerForSequenceClassification", dict(embedding_size=16)),
    ("megatron-bert", "MegatronBertForSequenceClassification", {}),
    ("convbert", "ConvBertForSequenceClassification", dict(embedding_size=16)),
    ("mobilebert", "MobileBertForSequenceClassification", dict(embedding_size=8, intra_bottleneck_size=8,
                                                                 true_hidden_size=8)),
    ("ernie", "ErnieForSequenceClassification", {}),
    ("xlm-roberta-xl", "XLMRobertaXLForSequenceClassification", {}),
    ("data2vec-text", "Data2VecTextForSequenceClassification", {}),
    ("esm", "EsmForSequenceClassification", dict(mask_token_id=3)),
    # mixture of experts: top-k routing is a function of the state; at a small β no phase changes a choice
    ("mixtral", "MixtralForCausalLM", dict(num_key_value_heads=1, num_local_experts=4, num_experts_per_tok=2)),
    ("qwen2_moe", "Qwen2MoeForCausalLM", dict(num_key_value_heads=1, num_experts=4, moe_intermediate_size=8,
                                              shared_expert_intermediate_size=8)),
    ("olmoe", "OlmoeForCausalLM", dict(num_key_value_heads=1, num_experts=4, num_experts_per_tok=2)),
    # audio: raw waveform in, a convolutional feature encoder as the first block
    ("wav2vec2", "Wav2Vec2ForSequenceClassification", dict(conv_dim=(8, 8), conv_stride=(5, 2), conv_kernel=(10, 3),
                                                           num_conv_pos_embeddings=8, num_conv_pos_embedding_groups=2,
                                                           classifier_proj_size=8)),
    # convolutional vision models: stages that change the shape, batch norm (ResNet)
    ("resnet", "ResNetForImageClassification", dict(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1])),
    ("convnext", "ConvNextForImageClassification", dict(num_stages=2, hidden_sizes=[8, 16], depths=[1, 1])),
    # heads the table does not list, on types it does
    ("bert", "BertForQuestionAnswering", dict(num_labels=2)),
    ("distilbert", "DistilBertForQuestionAnswering", dict(num_labels=2, dim=16, hidden_dim=32, n_layers=2,
                                                           n_heads=2)),
    ("llama", "LlamaForQuestionAnswering", dict(num_labels=2)),
    ("deberta-v2", "DebertaV2ForQuestionAnswering", dict(num_labels=2)),
    ("bert", "BertForMultipleChoice", {}),
    ("roberta", "RobertaForMultipleChoice", {}),
]

# Encoder–decoder models (the encoder state carried through the decoder blocks; T5's position bias recomputed per
# layer from the first layer's table); flan-T5 is T5 with a gated-GELU feed-forward and an untied LM head.
_SEQ2SEQ = dict(d_model=16, encoder_layers=2, decoder_layers=2, encoder_attention_heads=2, decoder_attention_heads=2,
                encoder_ffn_dim=32, decoder_ffn_dim=32, decoder_start_token_id=0)
_T5 = dict(d_model=16, d_kv=8, d_ff=32, num_layers=2, num_heads=2, relative_attention_num_buckets=8,
           decoder_start_token_id=0)
SEQ2SEQ_CASES = [
    ("t5", "T5ForConditionalGeneration", _T5),
    ("t5", "T5ForConditionalGeneration", dict(_T5, feed_forward_proj="gated-gelu", tie_word_embeddings=False)),
    # Post-norm, no final encoder norm: the encoder's last state reaches the decoder with no module in between, so
    # the sweep's VJP there is a view of the error above (the engine's _own_storage; without it, 2x cross-attention
    # gradients).
    ("bart", "BartForConditionalGeneration", _SEQ2SEQ),
    ("mbart", "MBartForConditionalGeneration", _SEQ2SEQ),
    # speech: log-mel frames in (two per encoder position), a convolutional stem as the first block
    ("whisper", "WhisperForConditionalGeneration", dict(_SEQ2SEQ, num_mel_bins=8, max_source_positions=8,
                                                         max_target_positions=16, decoder_start_token_id=1)),
]

# EP's centered bias is O(β²) with the model's curvature: DeBERTa's QA loss has 1.0e-4 relative error at β = 1e-5
# (9.9e-3 at 1e-4: second order), so it is checked at 1e-6.
BETA = {"DebertaV2ForQuestionAnswering": 1e-6}


def build(model_type: str, cls: str, overrides: dict, seed: int = 0) -> torch.nn.Module:
    config = AutoConfig.for_model(model_type, **{**COMMON, **overrides})
    torch.manual_seed(seed)
    return getattr(transformers, cls)(config)


def batch_for(cls: str, n: int = 3, length: int = 7, seed: int = 1) -> dict:
    g = torch.Generator().manual_seed(seed)
    if cls.startswith("Whisper"):
        features = torch.randn(n, 8, 16, generator=g)  # 8 mel bins, 2 frames per encoder position
        return {"input_features": features, "labels": torch.randint(3, 48, (n, 5), generator=g)}
    if cls.startswith("Wav2Vec2"):
        return {"input_values": torch.randn(n, 400, generator=g), "labels": torch.randint(0, 3, (n,), generator=g)}
    if cls.endswith("ForImageClassification"):
        return {"pixel_values": torch.rand(n, 3, 32, 32, generator=g), "labels": torch.randint(0, 3, (n,), generator=g)}
    if cls.endswith("ForMultipleChoice"):
        ids = torch.randint(3, 48, (n, 2, length), generator=g)
        labels = {"labels": torch.randint(0, 2, (n,), generator=g)}
    else:
        ids = torch.randint(3, 48, (n, length), generator=g)
        if cls.endswith("ForQuestionAnswering"):
            start = torch.randint(0, length - 3, (n,), generator=g)  # answers inside every row's real tokens
            labels = {"start_positions": start, "end_positions": start + 1}
        elif cls.endswith("ForCausalLM"):
            labels = {"labels": ids.clone()}
        elif cls.endswith("ForConditionalGeneration"):  # targets of another length, one of them padded
            labels = {"labels": torch.randint(3, 48, (n, length - 2), generator=g)}
            labels["labels"][2, -1] = -100
        else:
            labels = {"labels": torch.randint(0, 3, (n,), generator=g)}
    mask = torch.ones_like(ids)
    mask[1, ..., -2:] = 0  # one padded row: the masks the forward builds reach the layers
    return {"input_ids": ids, "attention_mask": mask, **labels}


@pytest.mark.parametrize("model_type, cls, overrides", CASES, ids=[c[1] for c in CASES])
def test_ep_equals_backprop_by_structure(model_type, cls, overrides):
    model = build(model_type, cls, overrides)
    assert model_type not in MODEL_TYPES or cls not in supported_classes(model_type)  # no table row covers it
    prepare_ep_model(model)
    model.set_experts_implementation("eager")  # MoE: the grouped-mm expert kernels take no float64
    model.double().eval()
    batch = {k: v.double() if v.is_floating_point() else v for k, v in batch_for(cls).items()}
    assert check_against_backprop(model, batch, beta=BETA.get(cls, 1e-5)) == []


def test_negative_control_one_sided_nudging_fails_the_bounds():
    """The same check at β = 0.05 with one-sided nudging: its O(β) bias fails the bounds the cases pass."""
    model = build("opt", "OPTForCausalLM", CASES[0][2])
    prepare_ep_model(model)
    model.double().eval()
    batch = batch_for("OPTForCausalLM")
    bad = mismatches(model, ep_gradients(model, batch, beta=0.05, nudging="positive"), backprop_gradients(model, batch))
    assert bad


SMALL = dict(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32)


@pytest.mark.parametrize("model_type, cls, overrides, reason", [
    ("albert", "AlbertForSequenceClassification", dict(embedding_size=8), "does not call each of its"),
    ("clip", "CLIPModel", dict(text_config=dict(vocab_size=48, max_position_embeddings=32, **SMALL),
                               vision_config=dict(image_size=8, patch_size=4, **SMALL), projection_dim=8),
     "several layer stacks"),  # two towers, no encoder-decoder
    ("swinv2", "Swinv2ForImageClassification", dict(image_size=32, patch_size=4, embed_dim=8, depths=[1, 1],
                                                     num_attention_heads=[1, 2], window_size=4), "as separate blocks"),
])
def test_a_structure_that_does_not_fit_is_refused_at_init_naming_what_failed(tmp_path, model_type, cls, overrides,
                                                                              reason):
    model = build(model_type, cls, overrides)
    with pytest.raises(TypeError, match=f"{cls} cannot be split into EP blocks.*{reason}"):
        EPTrainer(model=model, args=toy_args(tmp_path))


@pytest.mark.parametrize("model_type, cls, overrides", [CASES[0], CASES[27], CASES[31]],
                         ids=["OPT causal LM", "BERT QA", "BERT multiple choice"])
def test_eptrainer_trains_models_by_structure(tmp_path, model_type, cls, overrides):
    """A few EPTrainer steps in train mode (dropout shared per step) lower the training loss."""
    from datasets import Dataset

    model = build(model_type, cls, overrides)
    rows = batch_for(cls, n=16, seed=2)
    data = Dataset.from_dict({k: v.tolist() for k, v in rows.items()})
    args = toy_args(tmp_path, max_steps=8, learning_rate=3e-3, per_device_train_batch_size=16, logging_steps=4)
    trainer = EPTrainer(model=model, args=args, train_dataset=data)
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert losses[-1] < losses[0], losses
    assert any("ep_energy" in h for h in trainer.state.log_history)


def test_readme_lists_exactly_these_cases():
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = re.split(r"\n#", text.split("#### By structure", 1)[1], maxsplit=1)[0]
    rows = [line.strip("|").split("|") for line in section.splitlines() if line.startswith("| `")]
    listed = {c for _, classes in rows for c in re.findall(r"`(\w+)`", classes)}
    assert listed == {cls for _, cls, _ in CASES + SEQ2SEQ_CASES}


@pytest.mark.parametrize("case, targets", [(CASES[0], ["q_proj", "v_proj"]), (SEQ2SEQ_CASES[0], ["q", "v"]),
                                           (SEQ2SEQ_CASES[2], ["q_proj", "v_proj"])], ids=["OPT", "T5", "BART"])
def test_lora_on_a_model_by_structure_matches_backprop(case, targets):
    """peft's LoRA (layers wrapped in place) on a type outside the table: only the adapter weights train, and their
    EP gradient is backprop's. With T5's table frozen, its position bias is still recomputed in each block (the
    record run hands the later layers none)."""
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(build(*case), LoraConfig(r=4, target_modules=targets))
    prepare_ep_model(model)
    model.double().eval()
    assert check_against_backprop(model, batch_for(case[1])) == []
    assert all("lora_" in n for n, p in model.named_parameters() if p.requires_grad)


@pytest.mark.parametrize("memory", ["fast", "low"])
@pytest.mark.parametrize("model_type, cls, overrides", SEQ2SEQ_CASES, ids=["T5", "flan-T5", "BART", "mBART",
                                                                     "Whisper"])
def test_encoder_decoder_ep_equals_backprop(model_type, cls, overrides, memory):
    """The encoder's state carried through the decoder blocks: exact with inner states ("fast": the copy has no
    error of its own) and with block states ("low": one identity error term per decoder block, O(β) displacement)."""
    model = build(model_type, cls, overrides)
    prepare_ep_model(model)
    model.double().eval()
    batch = {k: v.double() if v.is_floating_point() else v for k, v in batch_for(cls).items()}
    blocks = model.ep_stack(**batch).blocks
    assert len(blocks) == 2 + 2 + 1 + 2  # embedding, encoder layers, the forward between the stacks, decoder, tail
    assert check_against_backprop(model, batch, memory=memory) == []


def test_negative_control_encoder_decoder_one_sided_nudging_fails_the_bounds():
    model = build(*SEQ2SEQ_CASES[0])
    prepare_ep_model(model)
    model.double().eval()
    batch = batch_for("T5ForConditionalGeneration")
    bad = mismatches(model, ep_gradients(model, batch, beta=0.05, nudging="positive"), backprop_gradients(model, batch))
    assert bad


def test_t5_position_bias_is_recomputed_in_each_layers_block(monkeypatch):
    """T5's later layers are handed the bias the first layer computes from its table; without recomputing it in
    their blocks, the model is refused naming that input (and with it, the check above covers the table's
    gradient, which every layer's contrast adds to)."""
    from mep_hf.adapters import traced

    model = build(*SEQ2SEQ_CASES[0])
    structure = traced.trace_structure(model)
    tables = [m for m in structure.bias_from if m is not None]
    assert len(tables) == 2  # the second layer of each stack
    assert all(t is model.get_submodule(f"{s}.block.0.layer.0.SelfAttention") for t, s in zip(tables,
                                                                                           ["encoder", "decoder"]))
    monkeypatch.setattr(traced, "_bias_table", lambda layer: None)
    with pytest.raises(traced.DoesNotFit, match=r"depend on parameters \(position_bias\)"):
        traced.trace_structure(build(*SEQ2SEQ_CASES[0]))


def test_generation_is_the_stock_models_after_adaptation():
    """generate() runs the stock forward: an adapted T5 generates what an identical unadapted one does."""
    adapted, stock = build(*SEQ2SEQ_CASES[0]).eval(), build(*SEQ2SEQ_CASES[0]).eval()
    prepare_ep_model(adapted)
    ids = batch_for("T5ForConditionalGeneration")["input_ids"]
    kwargs = dict(max_new_tokens=4, do_sample=False)
    assert torch.equal(adapted.generate(input_ids=ids, **kwargs), stock.generate(input_ids=ids, **kwargs))


def test_batch_norm_statistics_move_once_per_ep_step_as_in_backprop(monkeypatch):
    """An EP step in train mode runs each block several times; its batch-norm running statistics move as backprop's
    one forward moves them (one more tracked batch, the same running mean and variance). Negative control: with the
    guard off, they move on every call."""
    import copy

    import mep_hf
    from mep_hf.adapters import traced

    resnet = next(c for c in CASES if c[0] == "resnet")
    reference, batch = build(*resnet).train(), batch_for(resnet[1], n=4)
    model = copy.deepcopy(reference)
    reference(**batch)  # backprop's forward: one update
    mep_hf.ep_backward(model, batch)
    norms = [(a, b) for a, b in zip(model.modules(), reference.modules()) if isinstance(a, torch.nn.BatchNorm2d)]
    assert norms and all(int(a.num_batches_tracked) == 1 for a, _ in norms)
    for a, b in norms:
        torch.testing.assert_close(a.running_mean, b.running_mean, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(a.running_var, b.running_var, rtol=1e-5, atol=1e-6)

    monkeypatch.setattr(traced._StatisticsOnce, "once", lambda self: contextlib.nullcontext())
    unguarded = build(*resnet).train()
    mep_hf.ep_backward(unguarded, batch)
    assert max(int(m.num_batches_tracked) for m in unguarded.modules() if isinstance(m, torch.nn.BatchNorm2d)) > 1


def test_moe_routing_is_chosen_once_per_step():
    """A mixture of experts routes once per step: a layer's later calls in the step (settling, the contrast) reuse
    the experts its first call chose, whatever their input; the next step chooses afresh. Negative control: the
    same input in a new step is routed by its own state."""
    mixtral = next(c for c in CASES if c[0] == "mixtral")
    model = build(*mixtral)
    prepare_ep_model(model)
    model.set_experts_implementation("eager")
    model.double().eval()
    batch = batch_for(mixtral[1])
    routed = []
    hook = model.model.layers[0].mlp.gate.register_forward_hook(lambda m, a, out: routed.append(out[-1].clone()))
    stack = model.ep_stack(**batch)
    state = stack.blocks[0](stack.inputs)
    stack.blocks[1](state)  # the step's first call of the layer: it chooses
    stack.blocks[1](-3 * state)  # a very different state, the same step
    model.ep_stack(**batch).blocks[1](-3 * state)  # a new step
    hook.remove()
    assert torch.equal(routed[1], routed[0])
    assert not torch.equal(routed[2], routed[0])
