"""torch's legacy tensor constructors (``torch.FloatTensor(x)``, ``torch.Tensor(x)``)."""
import numpy as np
import jax.numpy as jnp


def torch_legacy_tensor(data_or_size, dtype):
    """``torch.FloatTensor(x)`` with one argument known only at run time: an int is a size
    (torch leaves that memory uninitialised; here it is zeros), anything else is data."""
    if isinstance(data_or_size, (int, np.integer)) and not isinstance(data_or_size, (bool, np.bool_)):
        return jnp.zeros((int(data_or_size),), dtype)
    return jnp.asarray(data_or_size, dtype)
