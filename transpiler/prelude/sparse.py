"""torch sparse tensors, represented densely (same values; memory grows with numel)."""
import numpy as np
import jax.numpy as jnp


def torch_sparse_coo_dense(indices, values, size=None, dtype=None):
    """``torch.sparse_coo_tensor(indices, values, size)`` as a dense array. Values at the same
    index are summed, as torch's ``coalesce`` does; ``size`` defaults to the largest index + 1
    per sparse dimension followed by the values' dense dimensions."""
    indices = jnp.asarray(indices)
    values = jnp.asarray(values)
    if size is None:
        size = tuple(int(m) + 1 for m in np.asarray(indices).max(axis=1)) + tuple(values.shape[1:])
    dtype = dtype or values.dtype
    return jnp.zeros(tuple(size), dtype).at[tuple(indices)].add(values.astype(dtype))
