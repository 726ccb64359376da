"""torch.nn.Transformer (encoder-decoder) on top of the Transformer layers of attention.py."""
from typing import Any

import jax.numpy as jnp
import flax.linen as nn


def torch_square_subsequent_mask(sz, dtype=jnp.float32):
    """``nn.Transformer.generate_square_subsequent_mask(sz)``: a float (sz, sz) mask, -inf
    above the diagonal (future positions) and 0 elsewhere."""
    future = jnp.triu(jnp.ones((sz, sz), dtype=bool), k=1)
    return jnp.where(future, -jnp.inf, 0.0).astype(dtype)


class TorchTransformer(nn.Module):
    """torch.nn.Transformer: ``encoder`` (``layers_{i}`` and a final ``norm``) and ``decoder``
    (the same), named like torch's children so weights transfer one to one.
    ``y = transformer(src, tgt, src_mask=None, tgt_mask=None, memory_mask=None,
    src_key_padding_mask=None, tgt_key_padding_mask=None, memory_key_padding_mask=None,
    src_is_causal=None, tgt_is_causal=None, memory_is_causal=False, train=False)``.
    Initialisation is the layers' own (torch re-initialises every matrix with
    xavier_uniform_ after construction; see the table entry's note)."""

    d_model: int = 512
    nhead: int = 8
    num_encoder_layers: int = 6
    num_decoder_layers: int = 6
    dim_feedforward: int = 2048
    dropout: float = 0.1
    activation: Any = "relu"
    custom_encoder: Any = None
    custom_decoder: Any = None
    layer_norm_eps: float = 1e-5
    batch_first: bool = False
    norm_first: bool = False
    bias: bool = True

    def setup(self):
        layer = dict(d_model=self.d_model, nhead=self.nhead, dim_feedforward=self.dim_feedforward,
                     dropout=self.dropout, activation=self.activation,
                     layer_norm_eps=self.layer_norm_eps, batch_first=self.batch_first,
                     norm_first=self.norm_first, bias=self.bias)
        if self.custom_encoder is not None:
            self.encoder = self.custom_encoder
        else:
            self.encoder = TorchTransformerEncoder(
                encoder_layer=TorchTransformerEncoderLayer(**layer), num_layers=self.num_encoder_layers,
                norm=nn.LayerNorm(epsilon=self.layer_norm_eps, use_bias=self.bias, use_fast_variance=False))
        if self.custom_decoder is not None:
            self.decoder = self.custom_decoder
        else:
            self.decoder = TorchTransformerDecoder(
                decoder_layer=TorchTransformerDecoderLayer(**layer), num_layers=self.num_decoder_layers,
                norm=nn.LayerNorm(epsilon=self.layer_norm_eps, use_bias=self.bias, use_fast_variance=False))

    def __call__(self, src, tgt, src_mask=None, tgt_mask=None, memory_mask=None,
                 src_key_padding_mask=None, tgt_key_padding_mask=None, memory_key_padding_mask=None,
                 src_is_causal=None, tgt_is_causal=None, memory_is_causal=False, train: bool = False):
        batch_axis = 0 if self.batch_first else 1
        if src.ndim == 3 and tgt.ndim == 3 and src.shape[batch_axis] != tgt.shape[batch_axis]:
            raise RuntimeError("the batch number of src and tgt must be equal")
        if src.shape[-1] != self.d_model or tgt.shape[-1] != self.d_model:
            raise RuntimeError("the feature number of src and tgt must be equal to d_model")
        memory = self.encoder(src, mask=src_mask, src_key_padding_mask=src_key_padding_mask,
                              is_causal=src_is_causal, train=train)
        return self.decoder(tgt, memory, tgt_mask=tgt_mask, memory_mask=memory_mask,
                            tgt_key_padding_mask=tgt_key_padding_mask,
                            memory_key_padding_mask=memory_key_padding_mask,
                            tgt_is_causal=tgt_is_causal, memory_is_causal=memory_is_causal, train=train)
