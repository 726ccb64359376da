"""torch.nn.Transformer (encoder-decoder) and generate_square_subsequent_mask vs. the
converted TorchTransformer: outputs and gradients (inputs and parameters) with torch's
weights transferred, jitted, eval mode, masks of every kind."""
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_layers_attention import bool_mask, causal  # noqa: E402
from test_layers_recurrent import arr, compare, converter_of, render_layer  # noqa: E402

from transpiler.api import convert_source  # noqa: E402

E, L, S, N = 8, 5, 7, 3


def test_transformer_seq_first_with_causal_target_mask():
    compare("nn.Transformer(d_model=8, nhead=2, num_encoder_layers=1, num_decoder_layers=2, dim_feedforward=16)",
            [arr(S, N, E, seed=1), arr(L, N, E, seed=2)],
            dict(tgt_mask=causal(L), src_key_padding_mask=bool_mask(N, S, seed=3),
                 memory_key_padding_mask=bool_mask(N, S, seed=3)))


def test_transformer_batch_first_norm_first_gelu():
    compare("nn.Transformer(8, 2, 2, 1, 16, 0.0, 'gelu', batch_first=True, norm_first=True)",
            [arr(N, S, E, seed=4), arr(N, L, E, seed=5)],
            dict(src_mask=arr(S, S, seed=6), tgt_mask=causal(L), tgt_is_causal=True))


def test_transformer_children_are_named_like_torch():
    fmod, code, entries = render_layer("nn.Transformer(8, 2, 1, 1, 16)")
    assert code.startswith("TorchTransformer(d_model=8, nhead=2, num_encoder_layers=1")
    shapes = jax.eval_shape(lambda: fmod.init(jax.random.PRNGKey(0), jnp.zeros((S, N, E)), jnp.zeros((L, N, E))))
    assert sorted(shapes["params"]) == ["decoder", "encoder"]
    assert sorted(shapes["params"]["decoder"]) == ["layers_0", "norm"]
    with pytest.raises(ValueError):   # a torch model with more layers than the flax one
        converter_of(entries[-1])(torch.nn.Transformer(8, 2, 2, 1, 16), shapes)


def test_square_subsequent_mask_matches_torch_and_converts():
    out = convert_source(
        "import torch.nn as nn\nm = nn.Transformer.generate_square_subsequent_mask(4)\n", "m.py").output.decode()
    namespace: dict = {}
    exec(compile(out, "m_jax.py", "exec"), namespace)
    np.testing.assert_array_equal(np.asarray(namespace["m"]),
                                  torch.nn.Transformer.generate_square_subsequent_mask(4).numpy())
