from .configuration_ep_char_transformer import EPCharTransformerConfig
from .modeling_ep_char_transformer import EPCharTransformerForCausalLM
from .tokenization_ep_char import EPCharTokenizer

__all__ = ["EPCharTokenizer", "EPCharTransformerConfig", "EPCharTransformerForCausalLM"]
