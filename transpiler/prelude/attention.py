"""Attention layers with the call semantics of torch.nn.MultiheadAttention and the
torch.nn.Transformer* layers.

Parameters are flax-idiomatic and map one to one onto torch's: ``q_proj``/``k_proj``/
``v_proj`` are ``nn.Dense`` layers holding the three row blocks of torch's ``in_proj_weight``
(or ``q/k/v_proj_weight``) transposed and of ``in_proj_bias``; ``out_proj`` is torch's
``out_proj`` Linear; ``bias_k``/``bias_v`` keep torch's (1, 1, E) shape.
"""
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import flax.linen as nn


def torch_mha_uniform(bound):
    """U(±bound) initialiser (torch's xavier_uniform_ / Linear init, with the bound given)."""

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def torch_mha_float_mask(mask, dtype):
    """torch's canonical mask: a boolean mask (True = masked out) becomes 0 / -inf."""
    if mask is None:
        return None
    if mask.dtype == jnp.bool_:
        return jnp.where(mask, -jnp.inf, 0.0).astype(dtype)
    return mask.astype(dtype)


def torch_transformer_activation(activation):
    """The activation of torch's Transformer layers: "relu", "gelu" (exact erf) or a callable."""
    if isinstance(activation, str):
        if activation == "relu":
            return nn.relu
        if activation == "gelu":
            return partial(nn.gelu, approximate=False)
        raise ValueError(f"activation should be relu/gelu, not {activation}")
    return activation


class TorchMultiheadAttention(nn.Module):
    """torch.nn.MultiheadAttention.

    ``out, weights = attn(query, key, value, key_padding_mask=None, need_weights=True,
    attn_mask=None, average_attn_weights=True, is_causal=False, train=False)``: shapes,
    boolean (True = masked out) and additive float masks, head averaging and ``None``
    weights when ``need_weights=False`` all as in torch. Dropout on the attention weights
    only when ``train`` (rng stream 'dropout').
    """

    embed_dim: int
    num_heads: int
    dropout: float = 0.0
    bias: bool = True
    add_bias_kv: bool = False
    add_zero_attn: bool = False
    kdim: Any = None
    vdim: Any = None
    batch_first: bool = False

    @property
    def head_dim(self):
        return self.embed_dim // self.num_heads

    def setup(self):
        e = self.embed_dim
        if e % self.num_heads:
            raise ValueError(f"embed_dim {e} must be divisible by num_heads {self.num_heads}")
        kdim = e if self.kdim is None else self.kdim
        vdim = e if self.vdim is None else self.vdim
        zeros = nn.initializers.zeros
        if kdim == e and vdim == e:
            # torch packs q, k, v into one (3E, E) in_proj_weight: xavier over the packed shape
            bounds = [(6.0 / (4 * e)) ** 0.5] * 3
        else:
            bounds = [(6.0 / (e + d)) ** 0.5 for d in (e, kdim, vdim)]
        self.q_proj = nn.Dense(e, use_bias=self.bias, kernel_init=torch_mha_uniform(bounds[0]), bias_init=zeros)
        self.k_proj = nn.Dense(e, use_bias=self.bias, kernel_init=torch_mha_uniform(bounds[1]), bias_init=zeros)
        self.v_proj = nn.Dense(e, use_bias=self.bias, kernel_init=torch_mha_uniform(bounds[2]), bias_init=zeros)
        self.out_proj = nn.Dense(e, use_bias=self.bias, kernel_init=torch_mha_uniform(1.0 / e ** 0.5),
                                 bias_init=zeros)
        if self.add_bias_kv:
            normal = nn.initializers.normal(stddev=(1.0 / e) ** 0.5)  # xavier_normal_ on (1, 1, E)
            self.bias_k = self.param("bias_k", normal, (1, 1, e))
            self.bias_v = self.param("bias_v", normal, (1, 1, e))
        self.attn_dropout = nn.Dropout(rate=self.dropout)

    def __call__(self, query, key, value, key_padding_mask=None, need_weights=True, attn_mask=None,
                 average_attn_weights=True, is_causal=False, train: bool = False):
        batched = query.ndim == 3
        if query.ndim not in (2, 3) or key.ndim != query.ndim or value.ndim != query.ndim:
            raise ValueError("MultiheadAttention: query, key and value must all be 3-D (batched) "
                             "or all 2-D (unbatched)")
        if is_causal and attn_mask is None:
            raise ValueError("MultiheadAttention: is_causal is only a hint; pass the causal attn_mask")
        if not batched:
            query, key, value = query[None], key[None], value[None]
            if key_padding_mask is not None:
                key_padding_mask = key_padding_mask[None]
        elif not self.batch_first:
            query, key, value = (jnp.swapaxes(a, 0, 1) for a in (query, key, value))
        # batch-major from here: query (N, L, E), key (N, S, kdim), value (N, S, vdim)
        n, tgt_len, e = query.shape
        h = self.num_heads
        head_dim = e // h
        q = self.q_proj(query)
        k = self.k_proj(key)
        v = self.v_proj(value)
        kpm = torch_mha_float_mask(key_padding_mask, q.dtype)
        mask = torch_mha_float_mask(attn_mask, q.dtype)
        if mask is not None:
            src_len = key.shape[1]
            if mask.ndim == 2:
                if mask.shape != (tgt_len, src_len):
                    raise ValueError(f"2-D attn_mask must be {(tgt_len, src_len)}, got {mask.shape}")
                mask = mask[None, None]
            elif mask.ndim == 3:
                if mask.shape != (n * h, tgt_len, src_len):
                    raise ValueError(f"3-D attn_mask must be {(n * h, tgt_len, src_len)}, got {mask.shape}")
                mask = mask.reshape(n, h, tgt_len, src_len)
            else:
                raise ValueError(f"attn_mask must be 2-D or 3-D, got {mask.ndim}-D")
        if self.add_bias_kv:
            k = jnp.concatenate([k, jnp.broadcast_to(self.bias_k, (n, 1, e)).astype(k.dtype)], axis=1)
            v = jnp.concatenate([v, jnp.broadcast_to(self.bias_v, (n, 1, e)).astype(v.dtype)], axis=1)
        k = k.reshape(n, k.shape[1], h, head_dim)
        v = v.reshape(n, v.shape[1], h, head_dim)
        if self.add_zero_attn:
            k = jnp.concatenate([k, jnp.zeros((n, 1, h, head_dim), k.dtype)], axis=1)
            v = jnp.concatenate([v, jnp.zeros((n, 1, h, head_dim), v.dtype)], axis=1)
        extra = int(self.add_bias_kv) + int(self.add_zero_attn)
        if extra and mask is not None:
            mask = jnp.pad(mask, ((0, 0), (0, 0), (0, 0), (0, extra)))
        if extra and kpm is not None:
            kpm = jnp.pad(kpm, ((0, 0), (0, extra)))
        if kpm is not None:
            kpm = kpm[:, None, None, :]
            mask = kpm if mask is None else mask + kpm
        q = q.reshape(n, tgt_len, h, head_dim) * (1.0 / head_dim) ** 0.5
        logits = jnp.einsum("nlhd,nshd->nhls", q, k)
        if mask is not None:
            logits = logits + mask
        weights = jax.nn.softmax(logits, axis=-1)
        weights = self.attn_dropout(weights, deterministic=not train)
        out = jnp.einsum("nhls,nshd->nlhd", weights, v).reshape(n, tgt_len, e)
        out = self.out_proj(out)
        if not batched:
            out = out[0]
        elif not self.batch_first:
            out = jnp.swapaxes(out, 0, 1)
        if not need_weights:
            return out, None
        if average_attn_weights:
            weights = weights.mean(axis=1)
        return out, (weights if batched else weights[0])


class TorchTransformerEncoderLayer(nn.Module):
    """torch.nn.TransformerEncoderLayer:
    ``y = layer(src, src_mask=None, src_key_padding_mask=None, is_causal=False, train=False)``."""

    d_model: int
    nhead: int
    dim_feedforward: int = 2048
    dropout: float = 0.1
    activation: Any = "relu"
    layer_norm_eps: float = 1e-5
    batch_first: bool = False
    norm_first: bool = False
    bias: bool = True

    def setup(self):
        self.self_attn = TorchMultiheadAttention(embed_dim=self.d_model, num_heads=self.nhead,
                                                 dropout=self.dropout, bias=self.bias,
                                                 batch_first=self.batch_first)
        b1 = 1.0 / self.d_model ** 0.5
        b2 = 1.0 / self.dim_feedforward ** 0.5
        self.linear1 = nn.Dense(self.dim_feedforward, use_bias=self.bias,
                                kernel_init=torch_mha_uniform(b1), bias_init=torch_mha_uniform(b1))
        self.linear2 = nn.Dense(self.d_model, use_bias=self.bias,
                                kernel_init=torch_mha_uniform(b2), bias_init=torch_mha_uniform(b2))
        self.norm1 = nn.LayerNorm(epsilon=self.layer_norm_eps, use_bias=self.bias, use_fast_variance=False)
        self.norm2 = nn.LayerNorm(epsilon=self.layer_norm_eps, use_bias=self.bias, use_fast_variance=False)
        self.dropout_ff = nn.Dropout(rate=self.dropout)
        self.dropout1 = nn.Dropout(rate=self.dropout)
        self.dropout2 = nn.Dropout(rate=self.dropout)

    def _sa_block(self, x, mask, key_padding_mask, is_causal, train):
        x = self.self_attn(x, x, x, key_padding_mask=key_padding_mask, need_weights=False,
                           attn_mask=mask, is_causal=is_causal, train=train)[0]
        return self.dropout1(x, deterministic=not train)

    def _ff_block(self, x, train):
        x = self.dropout_ff(torch_transformer_activation(self.activation)(self.linear1(x)), deterministic=not train)
        return self.dropout2(self.linear2(x), deterministic=not train)

    def __call__(self, src, src_mask=None, src_key_padding_mask=None, is_causal=False, train: bool = False):
        x = src
        if self.norm_first:
            x = x + self._sa_block(self.norm1(x), src_mask, src_key_padding_mask, is_causal, train)
            x = x + self._ff_block(self.norm2(x), train)
        else:
            x = self.norm1(x + self._sa_block(x, src_mask, src_key_padding_mask, is_causal, train))
            x = self.norm2(x + self._ff_block(x, train))
        return x


class TorchTransformerEncoder(nn.Module):
    """torch.nn.TransformerEncoder: ``num_layers`` independent copies of ``encoder_layer``
    (``layers_0``, ``layers_1``, ...), then ``norm`` if given.
    ``y = encoder(src, mask=None, src_key_padding_mask=None, is_causal=None, train=False)``."""

    encoder_layer: nn.Module
    num_layers: int
    norm: Any = None

    def setup(self):
        self.layers = [self.encoder_layer.clone(parent=None) for _ in range(self.num_layers)]

    def __call__(self, src, mask=None, src_key_padding_mask=None, is_causal=None, train: bool = False):
        x = src
        for layer in self.layers:
            x = layer(x, src_mask=mask, src_key_padding_mask=src_key_padding_mask,
                      is_causal=bool(is_causal), train=train)
        if self.norm is not None:
            x = self.norm(x)
        return x


class TorchTransformerDecoderLayer(nn.Module):
    """torch.nn.TransformerDecoderLayer: ``y = layer(tgt, memory, tgt_mask=None,
    memory_mask=None, tgt_key_padding_mask=None, memory_key_padding_mask=None,
    tgt_is_causal=False, memory_is_causal=False, train=False)``."""

    d_model: int
    nhead: int
    dim_feedforward: int = 2048
    dropout: float = 0.1
    activation: Any = "relu"
    layer_norm_eps: float = 1e-5
    batch_first: bool = False
    norm_first: bool = False
    bias: bool = True

    def setup(self):
        self.self_attn = TorchMultiheadAttention(embed_dim=self.d_model, num_heads=self.nhead,
                                                 dropout=self.dropout, bias=self.bias,
                                                 batch_first=self.batch_first)
        self.multihead_attn = TorchMultiheadAttention(embed_dim=self.d_model, num_heads=self.nhead,
                                                      dropout=self.dropout, bias=self.bias,
                                                      batch_first=self.batch_first)
        b1 = 1.0 / self.d_model ** 0.5
        b2 = 1.0 / self.dim_feedforward ** 0.5
        self.linear1 = nn.Dense(self.dim_feedforward, use_bias=self.bias,
                                kernel_init=torch_mha_uniform(b1), bias_init=torch_mha_uniform(b1))
        self.linear2 = nn.Dense(self.d_model, use_bias=self.bias,
                                kernel_init=torch_mha_uniform(b2), bias_init=torch_mha_uniform(b2))
        self.norm1 = nn.LayerNorm(epsilon=self.layer_norm_eps, use_bias=self.bias, use_fast_variance=False)
        self.norm2 = nn.LayerNorm(epsilon=self.layer_norm_eps, use_bias=self.bias, use_fast_variance=False)
        self.norm3 = nn.LayerNorm(epsilon=self.layer_norm_eps, use_bias=self.bias, use_fast_variance=False)
        self.dropout_ff = nn.Dropout(rate=self.dropout)
        self.dropout1 = nn.Dropout(rate=self.dropout)
        self.dropout2 = nn.Dropout(rate=self.dropout)
        self.dropout3 = nn.Dropout(rate=self.dropout)

    def _sa_block(self, x, mask, key_padding_mask, is_causal, train):
        x = self.self_attn(x, x, x, key_padding_mask=key_padding_mask, need_weights=False,
                           attn_mask=mask, is_causal=is_causal, train=train)[0]
        return self.dropout1(x, deterministic=not train)

    def _mha_block(self, x, memory, mask, key_padding_mask, is_causal, train):
        x = self.multihead_attn(x, memory, memory, key_padding_mask=key_padding_mask, need_weights=False,
                                attn_mask=mask, is_causal=is_causal, train=train)[0]
        return self.dropout2(x, deterministic=not train)

    def _ff_block(self, x, train):
        x = self.dropout_ff(torch_transformer_activation(self.activation)(self.linear1(x)), deterministic=not train)
        return self.dropout3(self.linear2(x), deterministic=not train)

    def __call__(self, tgt, memory, tgt_mask=None, memory_mask=None, tgt_key_padding_mask=None,
                 memory_key_padding_mask=None, tgt_is_causal=False, memory_is_causal=False,
                 train: bool = False):
        x = tgt
        if self.norm_first:
            x = x + self._sa_block(self.norm1(x), tgt_mask, tgt_key_padding_mask, tgt_is_causal, train)
            x = x + self._mha_block(self.norm2(x), memory, memory_mask, memory_key_padding_mask,
                                    memory_is_causal, train)
            x = x + self._ff_block(self.norm3(x), train)
        else:
            x = self.norm1(x + self._sa_block(x, tgt_mask, tgt_key_padding_mask, tgt_is_causal, train))
            x = self.norm2(x + self._mha_block(x, memory, memory_mask, memory_key_padding_mask,
                                               memory_is_causal, train))
            x = self.norm3(x + self._ff_block(x, train))
        return x


class TorchTransformerDecoder(nn.Module):
    """torch.nn.TransformerDecoder: ``num_layers`` independent copies of ``decoder_layer``
    (``layers_0``, ...), then ``norm`` if given. ``y = decoder(tgt, memory, tgt_mask=None,
    memory_mask=None, tgt_key_padding_mask=None, memory_key_padding_mask=None,
    tgt_is_causal=None, memory_is_causal=False, train=False)``."""

    decoder_layer: nn.Module
    num_layers: int
    norm: Any = None

    def setup(self):
        self.layers = [self.decoder_layer.clone(parent=None) for _ in range(self.num_layers)]

    def __call__(self, tgt, memory, tgt_mask=None, memory_mask=None, tgt_key_padding_mask=None,
                 memory_key_padding_mask=None, tgt_is_causal=None, memory_is_causal=False,
                 train: bool = False):
        x = tgt
        for layer in self.layers:
            x = layer(x, memory, tgt_mask=tgt_mask, memory_mask=memory_mask,
                      tgt_key_padding_mask=tgt_key_padding_mask,
                      memory_key_padding_mask=memory_key_padding_mask,
                      tgt_is_causal=bool(tgt_is_causal), memory_is_causal=memory_is_causal, train=train)
        if self.norm is not None:
            x = self.norm(x)
        return x
