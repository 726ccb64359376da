"""torch.nn.MultiheadAttention and Transformer encoder layers vs. the converted flax modules:
outputs, attention weights and gradients (inputs and parameters), jitted, eval mode; masks
boolean and float, batch_first both ways, unbatched input."""
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_layers_recurrent import arr, compare, converter_of, render_layer, spec_array  # noqa: E402

from transpiler.mapping import load_tables  # noqa: E402

E, NH, L, S, N = 8, 2, 5, 7, 3


def bool_mask(*shape, seed=0):
    """Random True (= masked out) entries; the first key of every row stays visible."""
    mask = np.random.default_rng(seed).random(shape) < 0.4
    mask[..., 0] = False
    return mask


def causal(n):
    return np.triu(np.ones((n, n), bool), k=1)


ATTENTION_KEYS = ["torch.nn.MultiheadAttention", "torch.nn.TransformerEncoderLayer",
                  "torch.nn.TransformerEncoder", "torch.nn.TransformerDecoderLayer",
                  "torch.nn.TransformerDecoder"]


@pytest.mark.parametrize("key", ATTENTION_KEYS)
def test_table_example(key):
    entry = load_tables().layers[key]
    assert entry.call == "train"
    assert entry.params_converter.startswith("attention:")
    args = [spec_array(spec, seed=i) for i, spec in enumerate(entry.inputs.values())]
    compare(entry.example, args, eager=key == 'torch.nn.MultiheadAttention')  # op by op once; jit always


# ---------------------------------------------------------------- MultiheadAttention

def _qkv(batched=True, batch_first=False, kdim=E, vdim=E):
    if not batched:
        return [arr(L, E, seed=1), arr(S, kdim, seed=2), arr(S, vdim, seed=3)]
    if batch_first:
        return [arr(N, L, E, seed=1), arr(N, S, kdim, seed=2), arr(N, S, vdim, seed=3)]
    return [arr(L, N, E, seed=1), arr(S, N, kdim, seed=2), arr(S, N, vdim, seed=3)]


MHA_CASES = {
    "batch_first, bool key_padding_mask, weights per head": (
        "nn.MultiheadAttention(8, 2, batch_first=True)", _qkv(batch_first=True),
        dict(key_padding_mask=bool_mask(N, S), average_attn_weights=False)),
    "bool attn_mask and key_padding_mask": (
        "nn.MultiheadAttention(8, 2)", _qkv(),
        dict(attn_mask=bool_mask(L, S, seed=4), key_padding_mask=bool_mask(N, S, seed=5))),
    "float 3-D attn_mask, no weights": (
        "nn.MultiheadAttention(embed_dim=8, num_heads=2)", _qkv(),
        dict(attn_mask=arr(N * NH, L, S, seed=6), need_weights=False)),
    "float key_padding_mask and 2-D attn_mask": (
        "nn.MultiheadAttention(8, 2, batch_first=True)", _qkv(batch_first=True),
        dict(attn_mask=arr(L, S, seed=7), key_padding_mask=arr(N, S, seed=8))),
    "kdim/vdim, no bias": (
        "nn.MultiheadAttention(8, 2, bias=False, kdim=3, vdim=5)", _qkv(kdim=3, vdim=5), {}),
    "add_bias_kv, add_zero_attn, masks": (
        "nn.MultiheadAttention(8, 2, add_bias_kv=True, add_zero_attn=True)", _qkv(),
        dict(attn_mask=bool_mask(L, S, seed=9), key_padding_mask=bool_mask(N, S, seed=10),
             average_attn_weights=False)),
    "unbatched, 3-D float mask, bool key_padding_mask": (
        "nn.MultiheadAttention(8, 2, batch_first=True)", _qkv(batched=False),
        dict(attn_mask=arr(NH, L, S, seed=11), key_padding_mask=bool_mask(S, seed=12))),
    "unbatched, separate projections": (
        "nn.MultiheadAttention(8, 2, kdim=3, vdim=5)", _qkv(batched=False, kdim=3, vdim=5),
        dict(average_attn_weights=False)),
    "is_causal hint with its mask": (
        "nn.MultiheadAttention(8, 2, batch_first=True)",
        [arr(N, L, E, seed=1), arr(N, L, E, seed=2), arr(N, L, E, seed=3)],
        dict(attn_mask=causal(L), is_causal=True, need_weights=False)),
}


@pytest.mark.parametrize("case", list(MHA_CASES))
def test_multihead_attention(case):
    src, args, kwargs = MHA_CASES[case]
    compare(src, args, kwargs)


def test_is_causal_needs_mask():
    fmod, _, _ = render_layer("nn.MultiheadAttention(8, 2)")
    q = jnp.zeros((L, N, E))
    variables = fmod.init(jax.random.PRNGKey(0), q, q, q)
    with pytest.raises(ValueError, match="attn_mask"):
        fmod.apply(variables, q, q, q, is_causal=True)
    with pytest.raises(RuntimeError, match="attn_mask"):  # torch refuses it too
        t = torch.nn.MultiheadAttention(8, 2)
        tq = torch.zeros(L, N, E)
        t(tq, tq, tq, is_causal=True)


def test_mha_dropout_only_in_train():
    fmod, _, _ = render_layer("nn.MultiheadAttention(8, 2, dropout=0.5)")
    q, k, v = (jnp.asarray(a) for a in _qkv())
    variables = fmod.init(jax.random.PRNGKey(0), q, k, v)
    run = jax.jit(lambda train: fmod.apply(variables, q, k, v, train=train,
                                           rngs={"dropout": jax.random.PRNGKey(1)}), static_argnums=0)
    (out, weights), (t_out, t_weights) = run(False), run(True)
    np.testing.assert_allclose(weights.sum(-1), 1.0, rtol=1e-5)
    assert not np.allclose(t_out, out)
    # as in torch, the returned weights are the dropped-out ones (zeros, survivors scaled by 2)
    assert np.any(np.asarray(t_weights) != np.asarray(weights))


def test_mha_init_like_torch():
    fmod, _, _ = render_layer("nn.MultiheadAttention(16, 4)")
    assert (fmod.embed_dim, fmod.num_heads, fmod.head_dim) == (16, 4, torch.nn.MultiheadAttention(16, 4).head_dim)
    q = jnp.zeros((L, N, 16))
    params = fmod.init(jax.random.PRNGKey(0), q, q, q)["params"]
    xavier = np.sqrt(6 / (16 + 3 * 16))   # over torch's packed (3E, E) in_proj_weight
    for name in ("q_proj", "k_proj", "v_proj"):
        kernel = np.asarray(params[name]["kernel"])
        assert np.abs(kernel).max() <= xavier and np.abs(kernel).max() > 0.8 * xavier
        assert not np.any(params[name]["bias"])
    out = np.asarray(params["out_proj"]["kernel"])
    assert np.abs(out).max() <= 1 / 4 and np.abs(out).max() > 0.8 / 4   # Linear: U(±1/sqrt(E))
    assert not np.any(params["out_proj"]["bias"])


def test_mha_converter_rejects_mismatch():
    fmod, _, entries = render_layer("nn.MultiheadAttention(8, 2)")
    q = jnp.zeros((L, N, E))
    variables = fmod.init(jax.random.PRNGKey(0), q, q, q)
    convert = converter_of(entries[-1])
    with pytest.raises(ValueError, match="shape"):
        convert(torch.nn.MultiheadAttention(16, 2), variables)
    with pytest.raises(ValueError, match="in_proj_bias"):
        convert(torch.nn.MultiheadAttention(8, 2, bias=False), variables)
    with pytest.raises(ValueError, match="bias_k"):
        convert(torch.nn.MultiheadAttention(8, 2, add_bias_kv=True), variables)
    with pytest.raises(ValueError, match="expected a torch.nn.MultiheadAttention"):
        convert(torch.nn.Linear(8, 8), variables)


# ---------------------------------------------------------------- Transformer layers

@pytest.mark.parametrize("src,args,kwargs", [
    ("nn.TransformerEncoderLayer(8, 2, 16, 0.0, 'gelu', norm_first=True)", [arr(L, N, E)],
     dict(src_mask=causal(L), src_key_padding_mask=bool_mask(N, L))),
    ("nn.TransformerEncoderLayer(d_model=8, nhead=2, dim_feedforward=16, layer_norm_eps=1e-6, bias=False, batch_first=True)",
     [arr(L, E)], dict(src_mask=arr(L, L, seed=3))),
    ("nn.TransformerEncoderLayer(8, 2, 16, batch_first=True)", [arr(N, L, E)],
     dict(src_mask=causal(L), is_causal=True)),
])
def test_transformer_encoder_layer(src, args, kwargs):
    compare(src, args, kwargs)


def test_transformer_encoder_with_norm_and_masks():
    # TransformerEncoder's nested-tensor fast path is only taken without autograd; compare()
    # runs torch with gradients, i.e. the reference (slow) path.
    src = ("nn.TransformerEncoder(nn.TransformerEncoderLayer(8, 2, 16, batch_first=True, norm_first=True), "
           "num_layers=2, norm=nn.LayerNorm(8), enable_nested_tensor=False)")
    compare(src, [arr(N, L, E)], dict(mask=causal(L), src_key_padding_mask=bool_mask(N, L)))


def test_transformer_encoder_layers_are_independent():
    fmod, code, entries = render_layer("nn.TransformerEncoder(nn.TransformerEncoderLayer(8, 2, 16), 3)")
    assert code.startswith("TorchTransformerEncoder(encoder_layer=TorchTransformerEncoderLayer(")
    params = fmod.init(jax.random.PRNGKey(0), jnp.zeros((L, N, E)))["params"]
    assert sorted(params) == ["layers_0", "layers_1", "layers_2"]
    assert not np.allclose(params["layers_0"]["linear1"]["kernel"], params["layers_1"]["linear1"]["kernel"])
    converted = converter_of(entries[-1])(
        torch.nn.TransformerEncoder(torch.nn.TransformerEncoderLayer(8, 2, 16), 3, enable_nested_tensor=False),
        jax.eval_shape(lambda: fmod.init(jax.random.PRNGKey(0), jnp.zeros((L, N, E)))))
    assert converted["params"]["layers_2"]["self_attn"]["v_proj"]["kernel"].shape == (8, 8)
    with pytest.raises(ValueError, match="layers.3"):
        converter_of(entries[-1])(
            torch.nn.TransformerEncoder(torch.nn.TransformerEncoderLayer(8, 2, 16), 4, enable_nested_tensor=False),
            {"params": params})


def test_transformer_decoder_layer_masks():
    compare("nn.TransformerDecoderLayer(8, 2, 16, 0.0, 'gelu', batch_first=True, norm_first=True)",
            [arr(N, L, E, seed=1), arr(N, S, E, seed=2)],
            dict(tgt_mask=causal(L), memory_mask=bool_mask(L, S, seed=3),
                 tgt_key_padding_mask=bool_mask(N, L, seed=4), memory_key_padding_mask=bool_mask(N, S, seed=5),
                 tgt_is_causal=True))


def test_transformer_decoder_with_norm():
    compare("nn.TransformerDecoder(nn.TransformerDecoderLayer(8, 2, 16), 2, norm=nn.LayerNorm(8))",
            [arr(L, N, E, seed=1), arr(S, N, E, seed=2)],
            dict(tgt_mask=causal(L), memory_key_padding_mask=bool_mask(N, S, seed=6)))
