"""Hand-written, idiomatic flax versions of the corpus models that ``benchmarks.train_step``
times against jaxport's conversions.

They compute what ``corpus/models/{mlp,mnist_cnn,resnet,tiny_gpt,nano_gpt,unet,char_rnn}.py``
compute (same layers, widths, depths and parameter tensors), written the way a JAX user would
write the same model from scratch: channels-last images (``nn.Conv`` on NHWC,
``nn.max_pool``), ``@nn.compact``, ``einsum`` attention over the layout the projections give
(per-head projections where the corpus model has them, as in ``tiny_gpt.py``; one fused q/k/v
projection where it has one, as in ``nano_gpt.py``), ``nn.RNN`` over ``nn.OptimizedLSTMCell``
for the LSTM, flax's default initialisers. Numerics are not meant to match torch bit for bit (e.g.
``jax.image.resize`` for the bilinear upsampling, flax's one-bias LSTM cell); the work per
step is the same.

Every model takes ``train`` like the converted ones (dropout and BatchNorm batch statistics
when ``train``).
"""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import flax.linen as nn


def batch_norm(train: bool) -> nn.BatchNorm:
    # torch's defaults (momentum 0.1 → flax 0.9, eps 1e-5)
    return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5)


# ------------------------------------------------------------------ MLP (corpus mlp.py)


class MLP(nn.Module):
    hidden: int = 32
    out_features: int = 4

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.relu(nn.Dense(self.hidden)(x))
        x = jnp.tanh(nn.Dense(self.hidden)(x))
        return nn.Dense(self.out_features)(x)


# ------------------------------------------------------------------ LeNet (corpus mnist_cnn.py)


class LeNet(nn.Module):
    """Input (N, H, W, 1)."""
    num_classes: int = 10

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.relu(nn.Conv(8, (3, 3), padding="VALID")(x))
        x = nn.relu(nn.Conv(16, (3, 3), padding="VALID")(x))
        x = nn.max_pool(x, (2, 2), strides=(2, 2))
        x = nn.Dropout(0.25, deterministic=not train)(x)
        x = x.reshape(x.shape[0], -1)
        x = nn.relu(nn.Dense(32)(x))
        x = nn.Dropout(0.5, deterministic=not train)(x)
        x = nn.Dense(self.num_classes)(x)
        return nn.log_softmax(x)


# ------------------------------------------------------------------ ResNet (corpus resnet.py)


class BasicBlock(nn.Module):
    planes: int
    stride: int = 1

    @nn.compact
    def __call__(self, x, train: bool = False):
        s = (self.stride, self.stride)
        out = nn.Conv(self.planes, (3, 3), s, padding=((1, 1), (1, 1)), use_bias=False)(x)
        out = nn.relu(batch_norm(train)(out))
        out = nn.Conv(self.planes, (3, 3), padding=((1, 1), (1, 1)), use_bias=False)(out)
        out = batch_norm(train)(out)
        if self.stride != 1 or x.shape[-1] != self.planes:
            x = nn.Conv(self.planes, (1, 1), s, use_bias=False)(x)
            x = batch_norm(train)(x)
        return nn.relu(out + x)


class ResNet(nn.Module):
    """Input (N, H, W, 3)."""
    num_blocks: Sequence[int] = (1, 1)
    num_classes: int = 10
    width: int = 8

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.Conv(self.width, (3, 3), padding=((1, 1), (1, 1)), use_bias=False)(x)
        x = nn.relu(batch_norm(train)(x))
        for stage, (n, stride) in enumerate(zip(self.num_blocks, (1, 2))):
            for i in range(n):
                x = BasicBlock(self.width * 2 ** stage, stride if i == 0 else 1)(x, train)
        x = jnp.mean(x, axis=(1, 2))
        return nn.Dense(self.num_classes)(x)


# ------------------------------------------------------------------ TinyGPT (corpus tiny_gpt.py)


def causal_mask(t: int):
    return jnp.tril(jnp.ones((t, t), bool))


class Head(nn.Module):
    """One causal attention head with its own key, query and value projections, as in the
    corpus model (its parameters are per head, so the reference keeps them per head)."""
    head_size: int

    @nn.compact
    def __call__(self, x):
        t = x.shape[1]
        k = nn.Dense(self.head_size, use_bias=False)(x)
        q = nn.Dense(self.head_size, use_bias=False)(x)
        v = nn.Dense(self.head_size, use_bias=False)(x)
        wei = jnp.einsum("bqd,bkd->bqk", q, k) * self.head_size ** -0.5
        wei = jax.nn.softmax(jnp.where(causal_mask(t), wei, -jnp.inf), axis=-1)
        return wei @ v


class TinyGPTBlock(nn.Module):
    num_heads: int

    @nn.compact
    def __call__(self, x):
        e = x.shape[-1]
        h = nn.LayerNorm(epsilon=1e-5)(x)
        h = jnp.concatenate([Head(e // self.num_heads)(h) for _ in range(self.num_heads)], axis=-1)
        x = x + nn.Dense(e)(h)
        h = nn.LayerNorm(epsilon=1e-5)(x)
        return x + nn.Dense(e)(nn.relu(nn.Dense(4 * e)(h)))


class TinyGPT(nn.Module):
    """Input token ids (N, T); returns logits (N, T, vocab) with tied embeddings."""
    vocab_size: int = 65
    block_size: int = 32
    n_embd: int = 16
    n_head: int = 2
    n_layer: int = 2

    @nn.compact
    def __call__(self, idx, train: bool = False):
        t = idx.shape[1]
        embed = nn.Embed(self.vocab_size, self.n_embd, embedding_init=nn.initializers.normal(0.02))
        pos = self.param("pos_emb", nn.initializers.zeros, (1, self.block_size, self.n_embd))
        x = embed(idx) + pos[:, :t]
        for _ in range(self.n_layer):
            x = TinyGPTBlock(self.n_head)(x)
        x = nn.LayerNorm(epsilon=1e-5)(x)
        return embed.attend(x)


# ------------------------------------------------------------------ GPT (corpus nano_gpt.py)


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention with one fused q/k/v projection."""
    num_heads: int
    dropout: float = 0.0

    @nn.compact
    def __call__(self, x, train: bool = False):
        b, t, e = x.shape
        h, d = self.num_heads, e // self.num_heads
        q, k, v = jnp.split(nn.Dense(3 * e)(x).reshape(b, t, 3 * h, d), 3, axis=2)
        att = jnp.einsum("bqhd,bkhd->bhqk", q, k) * d ** -0.5
        att = jax.nn.softmax(jnp.where(causal_mask(t), att, -jnp.inf), axis=-1)
        att = nn.Dropout(self.dropout, deterministic=not train)(att)
        y = jnp.einsum("bhqk,bkhd->bqhd", att, v).reshape(b, t, e)
        return nn.Dropout(self.dropout, deterministic=not train)(nn.Dense(e)(y))


class GPTBlock(nn.Module):
    num_heads: int
    dropout: float = 0.0

    @nn.compact
    def __call__(self, x, train: bool = False):
        e = x.shape[-1]
        x = x + CausalSelfAttention(self.num_heads, self.dropout)(nn.LayerNorm(epsilon=1e-5)(x), train)
        h = nn.gelu(nn.Dense(4 * e)(nn.LayerNorm(epsilon=1e-5)(x)), approximate=False)
        return x + nn.Dropout(self.dropout, deterministic=not train)(nn.Dense(e)(h))


class GPT(nn.Module):
    """nanoGPT-style: token and position embeddings, fused-attention blocks, tied output."""
    vocab_size: int = 65
    block_size: int = 32
    n_embd: int = 16
    n_head: int = 2
    n_layer: int = 2
    dropout: float = 0.0

    @nn.compact
    def __call__(self, idx, train: bool = False):
        t = idx.shape[1]
        wte = nn.Embed(self.vocab_size, self.n_embd)
        x = wte(idx) + nn.Embed(self.block_size, self.n_embd)(jnp.arange(t))
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
        for _ in range(self.n_layer):
            x = GPTBlock(self.n_head, self.dropout)(x, train)
        return wte.attend(nn.LayerNorm(epsilon=1e-5)(x))


# ------------------------------------------------------------------ UNet (corpus unet.py)


class DoubleConv(nn.Module):
    features: int
    mid: int | None = None

    @nn.compact
    def __call__(self, x, train: bool = False):
        for f in (self.mid or self.features, self.features):
            x = nn.Conv(f, (3, 3), padding=((1, 1), (1, 1)), use_bias=False)(x)
            x = nn.relu(batch_norm(train)(x))
        return x


class UNet(nn.Module):
    """Bilinear variant; input (N, H, W, C)."""
    n_classes: int = 2
    base: int = 4

    @nn.compact
    def __call__(self, x, train: bool = False):
        b = self.base
        x1 = DoubleConv(b)(x, train)
        x2 = DoubleConv(2 * b)(nn.max_pool(x1, (2, 2), (2, 2)), train)
        x3 = DoubleConv(2 * b)(nn.max_pool(x2, (2, 2), (2, 2)), train)   # 4b // factor 2
        x = self._up(x3, x2, out=b, mid=2 * b, train=train)   # Up(4b, 2b // 2), mid 4b // 2
        x = self._up(x, x1, out=b, mid=b, train=train)        # Up(2b, b), mid 2b // 2
        return nn.Conv(self.n_classes, (1, 1))(x)

    def _up(self, x, skip, out, mid, train):
        n, h, w, c = x.shape
        x = jax.image.resize(x, (n, 2 * h, 2 * w, c), "bilinear")
        return DoubleConv(out, mid)(jnp.concatenate([skip, x], axis=-1), train)


# ------------------------------------------------------------------ LSTM (corpus char_rnn.py)


class CharLSTM(nn.Module):
    """Token ids (N, T) → logits (N, T, vocab): embedding, stacked LSTM with dropout between
    layers, dropout, decoder."""
    vocab_size: int = 40
    embed_dim: int = 12
    hidden_size: int = 16
    num_layers: int = 2
    dropout: float = 0.1

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.Embed(self.vocab_size, self.embed_dim)(x)
        for layer in range(self.num_layers):
            x = nn.RNN(nn.OptimizedLSTMCell(self.hidden_size))(x)
            if layer < self.num_layers - 1:
                x = nn.Dropout(self.dropout, deterministic=not train)(x)
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
        return nn.Dense(self.vocab_size)(x)
