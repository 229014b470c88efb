"""What the structural adapter costs: EP's step time (library defaults, ``mep_hf.ep_backward``) over backprop's, in
one process, for a stock Llama through its table row, the same Llama adapted by its structure
(``mep_hf/adapters/traced.py``), and OPT (structure only). 4 layers of width 256, batch 8 x 128 tokens; median of 6.

    python benchmarks/structure_step_time.py
"""
import time, torch, transformers
from transformers import AutoConfig
import mep_hf
from mep_hf.adapters import traced
from mep_hf.adapters.base import attach_ep
torch.manual_seed(0); torch.set_num_threads(2)
def llama(): return transformers.LlamaForCausalLM(AutoConfig.for_model("llama", vocab_size=1000, hidden_size=256, num_hidden_layers=4, num_attention_heads=4, intermediate_size=512, max_position_embeddings=256))
def opt(): return transformers.OPTForCausalLM(AutoConfig.for_model("opt", vocab_size=1000, hidden_size=256, num_hidden_layers=4, num_attention_heads=4, ffn_dim=512, word_embed_proj_dim=256, max_position_embeddings=256))
ids = torch.randint(0, 1000, (8, 128)); batch = dict(input_ids=ids, labels=ids)
def timed(f, n=6):
    f(); ts=[]
    for _ in range(n):
        t=time.perf_counter(); f(); ts.append(time.perf_counter()-t)
    return sorted(ts)[n//2]
for name, build, force in [("llama (table)", llama, False), ("llama (structure)", llama, True), ("opt (structure)", opt, False)]:
    m = build().train()
    if force:
        s = traced.trace_structure(m); attach_ep(m, lambda self, *a, **k: s.ep_stack(self, a, k))
    else:
        mep_hf.prepare_ep_model(m)
    def bp():
        m(**batch).loss.backward(); m.zero_grad()
    def ep():
        mep_hf.ep_backward(m, batch); m.zero_grad()
    b, e = timed(bp), timed(ep)
    print(f"{name}: backprop {b*1e3:.0f} ms, EP {e*1e3:.0f} ms, ratio {e/b:.2f}", flush=True)
