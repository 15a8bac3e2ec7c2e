"""Writes a tiny LlamaForCausalLM with random weights and a locally trained tokenizer.

No model can be downloaded on the test machines, so the real vLLM engine serves this
(about 1.5 M parameters): enough to exercise the real process tree, rings and timeouts.
"""
import os
import sys

from tokenizers import Tokenizer, models, pre_tokenizers, trainers, decoders
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
import torch

out = sys.argv[1]
os.makedirs(out, exist_ok=True)

corpus = [
    "the quick brown fox jumps over the lazy dog",
    "hangwatch names the stuck rank within seconds",
    "tensor parallel workers meet in an all reduce every step",
    "shared memory rings carry the engine's remote procedure calls",
] * 50
tok = Tokenizer(models.BPE(unk_token="<unk>"))
tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
tok.decoder = decoders.ByteLevel()
trainer = trainers.BpeTrainer(
    vocab_size=512,
    special_tokens=["<unk>", "<s>", "</s>"],
    initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
)
tok.train_from_iterator(corpus, trainer)
fast = PreTrainedTokenizerFast(
    tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>"
)
fast.chat_template = "{% for m in messages %}{{ m['content'] }}\n{% endfor %}"
fast.save_pretrained(out)

torch.manual_seed(0)
config = LlamaConfig(
    vocab_size=len(fast),
    hidden_size=128,
    intermediate_size=256,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=512,
    bos_token_id=fast.bos_token_id,
    eos_token_id=fast.eos_token_id,
    torch_dtype="bfloat16",
)
model = LlamaForCausalLM(config).to(torch.bfloat16)
model.save_pretrained(out)
print(f"tiny model written to {out}: {sum(p.numel() for p in model.parameters())} parameters")
