"""torch's col2im (``F.fold`` / ``nn.Fold``) on channels-first input, the adjoint of
``torch_unfold`` (prelude/ops.py)."""
import jax
import jax.numpy as jnp


def torch_fold(x, output_size, kernel_size, dilation=1, padding=0, stride=1):
    """``F.fold``: (N, C*kh*kw, L) → (N, C, H, W), overlapping values summed (the adjoint of
    ``torch_unfold``); (C*kh*kw, L) input gives (C, H, W)."""
    unbatched = x.ndim == 2
    if unbatched:
        x = x[None]
    k, o = _tuple(kernel_size, 2), _tuple(output_size, 2)
    channels = x.shape[1] // (k[0] * k[1])
    zeros = jnp.zeros((x.shape[0], channels) + o, x.dtype)
    _, unfold_vjp = jax.vjp(lambda img: torch_unfold(img, kernel_size, dilation, padding, stride), zeros)
    (out,) = unfold_vjp(x)
    return out[0] if unbatched else out
