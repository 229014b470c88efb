from .configuration_ep_char_transformer import EPCharTransformerConfig
from .modeling_ep_char_transformer import EPCharTransformerForCausalLM, causal_lm_loss
from .tokenization_ep_char import EPCharTokenizer

__all__ = ["EPCharTokenizer", "EPCharTransformerConfig", "EPCharTransformerForCausalLM", "causal_lm_loss"]
