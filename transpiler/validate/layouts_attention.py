"""Weight-layout converters for the attention layers (``params_converter = "attention:NAME"``).

Same contract as ``layouts_recurrent``: ``converter(torch_module, flax_subtrees)`` returns
``flax_subtrees``' structure filled with numpy arrays, every leaf shape-checked.

MultiheadAttention (see ``transpiler/prelude/attention.py``): ``q_proj``/``k_proj``/``v_proj``
kernels are the row blocks [0:E], [E:2E], [2E:3E] of torch's ``in_proj_weight`` transposed
(or ``q/k/v_proj_weight`` transposed when kdim/vdim differ from embed_dim), their biases the
same blocks of ``in_proj_bias``; ``out_proj`` is a Linear (kernel = weight.T);
``bias_k``/``bias_v`` are copied as they are. Transformer layers add ``linear1``/``linear2``
(Linear) and ``norm1``..``norm3`` (LayerNorm: scale = weight), decoder layers
``multihead_attn``; encoder/decoder stacks ``layers_{i}`` and ``norm``.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from .layouts_recurrent import Source, _check_type, _identity, _transpose, convert_leaves, torch_arrays


def _rows(start: int, stop: int, transpose: bool) -> Callable[[np.ndarray], np.ndarray]:
    def take(a: np.ndarray) -> np.ndarray:
        block = a[start:stop]
        return block.T if transpose else block
    return take


def _linear(prefix: str, leaf: str):
    if leaf == "kernel":
        return f"{prefix}weight", _transpose
    if leaf == "bias":
        return f"{prefix}bias", _identity
    raise KeyError(leaf)


def _layer_norm(prefix: str, leaf: str):
    if leaf == "scale":
        return f"{prefix}weight", _identity
    if leaf == "bias":
        return f"{prefix}bias", _identity
    raise KeyError(leaf)


def mha_source(torch_mha, prefix: str = "") -> Source:
    e = torch_mha.embed_dim
    packed = torch_mha._qkv_same_embed_dim

    def source(collection: str, path: tuple[str, ...]):
        if collection != "params":
            raise KeyError(path)
        if path in (("bias_k",), ("bias_v",)):
            return prefix + path[0], _identity
        if len(path) != 2:
            raise KeyError(path)
        sub, leaf = path
        if sub == "out_proj":
            return _linear(prefix + "out_proj.", leaf)
        which = {"q_proj": 0, "k_proj": 1, "v_proj": 2}.get(sub)
        if which is None:
            raise KeyError(path)
        rows = _rows(which * e, (which + 1) * e, leaf == "kernel")
        if leaf == "bias":
            return prefix + "in_proj_bias", rows
        if leaf != "kernel":
            raise KeyError(path)
        if packed:
            return prefix + "in_proj_weight", rows
        return f"{prefix}{sub}_weight", _transpose

    return source


def transformer_layer_source(torch_layer, prefix: str = "") -> Source:
    """An encoder or decoder layer: attention children (``self_attn``, ``multihead_attn``),
    ``linear1``/``linear2`` and ``norm1``..``norm3``."""
    attention = {name: mha_source(getattr(torch_layer, name), f"{prefix}{name}.")
                 for name in ("self_attn", "multihead_attn") if hasattr(torch_layer, name)}

    def source(collection: str, path: tuple[str, ...]):
        if collection != "params" or not path:
            raise KeyError(path)
        head, rest = path[0], path[1:]
        if head in attention:
            return attention[head](collection, rest)
        if len(rest) != 1:
            raise KeyError(path)
        if head in ("linear1", "linear2"):
            return _linear(f"{prefix}{head}.", rest[0])
        if head in ("norm1", "norm2", "norm3"):
            return _layer_norm(f"{prefix}{head}.", rest[0])
        raise KeyError(path)

    return source


def stack_source(torch_stack, prefix: str = "") -> Source:
    """TransformerEncoder / TransformerDecoder: ``layers_{i}`` and the optional ``norm``."""
    layers = {f"layers_{i}": transformer_layer_source(layer, f"{prefix}layers.{i}.")
              for i, layer in enumerate(torch_stack.layers)}

    def source(collection: str, path: tuple[str, ...]):
        if collection != "params" or not path:
            raise KeyError(path)
        if path[0] in layers:
            return layers[path[0]](collection, path[1:])
        if path[0] == "norm" and len(path) == 2:
            return _layer_norm(prefix + "norm.", path[1])
        raise KeyError(path)

    return source


def multihead_attention(torch_module, flax_subtrees):
    """torch.nn.MultiheadAttention → TorchMultiheadAttention."""
    _check_type(torch_module, "MultiheadAttention")
    return convert_leaves("MultiheadAttention", flax_subtrees, torch_arrays(torch_module),
                          mha_source(torch_module))


def _transformer(torch_module, flax_subtrees, class_name: str, source) -> dict:
    _check_type(torch_module, class_name)
    return convert_leaves(class_name, flax_subtrees, torch_arrays(torch_module), source(torch_module))


def transformer_encoder_layer(torch_module, flax_subtrees):
    """torch.nn.TransformerEncoderLayer → TorchTransformerEncoderLayer."""
    return _transformer(torch_module, flax_subtrees, "TransformerEncoderLayer", transformer_layer_source)


def transformer_decoder_layer(torch_module, flax_subtrees):
    """torch.nn.TransformerDecoderLayer → TorchTransformerDecoderLayer."""
    return _transformer(torch_module, flax_subtrees, "TransformerDecoderLayer", transformer_layer_source)


def transformer_encoder(torch_module, flax_subtrees):
    """torch.nn.TransformerEncoder (its layers and optional final LayerNorm) → TorchTransformerEncoder."""
    return _transformer(torch_module, flax_subtrees, "TransformerEncoder", stack_source)


def transformer_decoder(torch_module, flax_subtrees):
    """torch.nn.TransformerDecoder (its layers and optional final LayerNorm) → TorchTransformerDecoder."""
    return _transformer(torch_module, flax_subtrees, "TransformerDecoder", stack_source)


def transformer_source(torch_model, prefix: str = "") -> Source:
    """torch.nn.Transformer: ``encoder`` and ``decoder`` stacks, each with its final norm."""
    stacks = {name: stack_source(getattr(torch_model, name), f"{prefix}{name}.")
              for name in ("encoder", "decoder")}

    def source(collection: str, path: tuple[str, ...]):
        if collection != "params" or not path or path[0] not in stacks:
            raise KeyError(path)
        return stacks[path[0]](collection, path[1:])

    return source


def transformer(torch_module, flax_subtrees):
    """torch.nn.Transformer → TorchTransformer."""
    return _transformer(torch_module, flax_subtrees, "Transformer", transformer_source)
