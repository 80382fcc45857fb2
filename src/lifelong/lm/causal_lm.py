"""A Hugging Face causal LM as the learner sees a model: token ids [B, T] -> next-token logits [B, T, V].

The loop, the objectives and every method work on plain `nn.Module`s that map inputs to outputs. A
transformers model takes keyword arguments and returns a `ModelOutput`; this wrapper passes the attention
mask (all ones for packed blocks, which hold no padding), turns the KV cache off (training never reuses it)
and returns the logits, and it carries the model's tokenizer with it (a plain attribute, not a module, so it
is never part of the state dict).

    >>> from transformers import LlamaConfig, LlamaForCausalLM
    >>> cfg = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
    ...                   num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=32)
    >>> lm = CausalLM(LlamaForCausalLM(cfg))
    >>> tuple(lm(torch.zeros(2, 8, dtype=torch.long)).shape), lm.vocab_size, lm.max_positions
    ((2, 8, 64), 64, 32)
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


class CausalLM(nn.Module):
    """`model`: a transformers `PreTrainedModel` for causal language modelling; `tokenizer`: its tokenizer
    (optional; `lifelong` uses it to build text streams and `lifelong export` saves it beside the model)."""

    def __init__(self, model: nn.Module, tokenizer: Any = None) -> None:
        super().__init__()
        self.model: Any = model  # a transformers PreTrainedModel (typed loosely: transformers is optional)
        self.tokenizer = tokenizer

    def forward(self, x: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        if attention_mask is None:
            attention_mask = torch.ones_like(x)
        return self.model(input_ids=x, attention_mask=attention_mask, use_cache=False).logits

    @property
    def config(self) -> Any:
        return self.model.config

    @property
    def vocab_size(self) -> int:
        """Rows of the output layer (may exceed the tokenizer's vocabulary: padded embeddings)."""
        return int(self.model.get_output_embeddings().weight.shape[0])

    @property
    def max_positions(self) -> int | None:
        """The longest sequence the model's position encoding covers, if its config says."""
        value = getattr(self.model.config, "max_position_embeddings", None)
        return int(value) if value is not None else None

    def gradient_checkpointing_enable(self) -> None:
        """Recompute activations in the backward pass instead of keeping them: less memory, ~30% more time."""
        options = {"use_reentrant": False}
        if hasattr(self.model, "activation_checkpointing_enable"):  # the name in recent transformers
            self.model.activation_checkpointing_enable(activation_checkpointing_kwargs=options)
        else:
            self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=options)
