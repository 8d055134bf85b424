"""AST's encoder layer in halves, and what the head needs of the last layer, computed for those tokens only.

A layer is an attention half (``h + attention(layernorm_before(h))``) and an FFN half
(``h + mlp(layernorm_after(h))``). DoRA adapts only ``mlp.fc2``, so the attention half of the lowest
adapted layer is frozen: the frozen-prefix cache stores the states after it (``attention_half``), and
training starts at that layer's FFN half (``ffn_half``).

Only the CLS and distillation tokens (the first two) of the last layer's output reach the head. Their
outputs need every token's keys and values, but queries, attention rows, the residual, both LayerNorms
and the FFN only for themselves: for AST-base at 1,024 frames that is 2 rows of 1,214 in everything but
the key and value projections. ``last_layer_tokens`` is ``ASTLayer.forward`` restricted so, written
against transformers 5's ``ASTLayer`` submodules (``layernorm_before``, ``attention.{q,k,v,o}_proj``,
``layernorm_after``, ``mlp``); tests compare it with the layer's own forward, so a change there fails
loudly.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def attention_half(layer: nn.Module, h: torch.Tensor, tokens: int | None = None) -> torch.Tensor:
    """``h + attention(layernorm_before(h))`` of an ``ASTLayer``, for every token or for the first ``tokens``
    only (their queries and attention rows; keys and values are every token's)."""
    attention = layer.attention
    batch, length, _ = h.shape
    tokens = length if tokens is None else tokens
    x = layer.layernorm_before(h)

    def heads(t: torch.Tensor, n: int) -> torch.Tensor:
        return t.view(batch, n, -1, attention.head_dim).transpose(1, 2)

    q = heads(attention.q_proj(x[:, :tokens]), tokens)
    k, v = heads(attention.k_proj(x), length), heads(attention.v_proj(x), length)
    dropout = attention.attention_dropout if attention.training else 0.0
    o = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, scale=attention.scaling)
    o = attention.o_proj(o.transpose(1, 2).reshape(batch, tokens, -1))
    return layer.dropout(o) + h[:, :tokens]


def ffn_half(layer: nn.Module, h: torch.Tensor) -> torch.Tensor:
    """``h + mlp(layernorm_after(h))`` of an ``ASTLayer``."""
    return layer.dropout(layer.mlp(layer.layernorm_after(h))) + h


def last_layer_tokens(layer: nn.Module, h: torch.Tensor, tokens: int = 2) -> torch.Tensor:
    """``layer(h)[:, :tokens]`` for an ``ASTLayer``, without computing the other tokens' outputs."""
    return ffn_half(layer, attention_half(layer, h, tokens))
