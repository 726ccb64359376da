"""Index-heavy set/graph operations: gather, scatter, masked_fill, topk, einsum."""
import jax
import jax.numpy as jnp
import flax.linen as nn
import math


# --- helpers added by jaxport (PyTorch semantics in JAX) ---
def torch_kaiming_uniform(fan_in=None):
    """U(-1/sqrt(fan_in), 1/sqrt(fan_in)): torch's default for Linear and Conv weights
    (``kaiming_uniform_(a=sqrt(5))``). Without ``fan_in``, it is the product of all but the
    last axis of the flax kernel shape, which is torch's fan_in for Dense and Conv kernels."""
    def init(key, shape, dtype=jnp.float32):
        n = math.prod(shape[:-1]) if fan_in is None else fan_in
        bound = 1.0 / math.sqrt(n) if n > 0 else 0.0
        return jax.random.uniform(key, shape, dtype, -bound, bound)
    return init


def torch_bias_uniform(fan_in):
    """U(-1/sqrt(fan_in), 1/sqrt(fan_in)): torch's default for Linear and Conv biases."""
    def init(key, shape, dtype=jnp.float32):
        bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
        return jax.random.uniform(key, shape, dtype, -bound, bound)
    return init


@jax.tree_util.register_pytree_node_class
class ValuesIndices(tuple):
    """``(values, indices)`` like torch's ``torch.return_types``: index it, unpack it, or use
    ``.values`` / ``.indices``; a pytree, so it may cross ``jax.jit`` boundaries."""

    def __new__(cls, values, indices):
        return tuple.__new__(cls, (values, indices))

    @property
    def values(self):
        return self[0]

    @property
    def indices(self):
        return self[1]

    def tree_flatten(self):
        return (self[0], self[1]), None

    @classmethod
    def tree_unflatten(cls, aux, children):
        return cls(*children)


def torch_topk(x, k, dim=-1, largest=True, sorted=True):
    """``torch.topk``: the k largest (or smallest) entries along ``dim`` and their indices."""
    moved = jnp.moveaxis(x, dim, -1)
    values, indices = jax.lax.top_k(moved if largest else -moved, k)
    if not largest:
        values = -values
    return ValuesIndices(jnp.moveaxis(values, -1, dim), jnp.moveaxis(indices, -1, dim))


def torch_squeeze(x, dim=None):
    """``torch.squeeze``: with ``dim`` (an int or a tuple), drop only those axes of size 1;
    axes of another size are kept (jnp.squeeze raises there)."""
    if dim is None:
        return jnp.squeeze(x)
    dims = dim if isinstance(dim, (tuple, list)) else (dim,)
    keep = tuple(d % x.ndim for d in dims if x.shape[d] == 1) if x.ndim else ()
    return jnp.squeeze(x, axis=keep) if keep else x


def torch_expand(x, *sizes):
    """``Tensor.expand``: broadcast to ``sizes``; ``-1`` keeps the existing size."""
    if len(sizes) == 1 and not isinstance(sizes[0], int):
        sizes = tuple(sizes[0])
    lead = len(sizes) - x.ndim
    shape = tuple(x.shape[i - lead] if s == -1 else s for i, s in enumerate(sizes))
    return jnp.broadcast_to(x, shape)


def _index_grid(index, dim):
    grids = list(jnp.meshgrid(*[jnp.arange(n) for n in index.shape], indexing="ij"))
    grids[dim] = index
    return tuple(grids)


def torch_gather(x, dim, index):
    """``torch.gather``: out[i][j] = x[index[i][j]][j] (dim 0); ``index`` may be smaller than
    ``x`` in the other axes (those are cut, never broadcast)."""
    cut = tuple(slice(None) if d == dim % x.ndim else slice(0, index.shape[d]) for d in range(x.ndim))
    return jnp.take_along_axis(x[cut], index, axis=dim)


def torch_scatter(x, dim, index, src, reduce=None):
    """``Tensor.scatter`` (out of place): x[index[i][j]][j] = src[i][j] (dim 0); ``src`` may be
    a scalar; ``reduce`` "add"/"multiply" combine instead of overwriting."""
    where = _index_grid(index, dim % x.ndim)
    if not jnp.ndim(src) == 0:
        src = src[tuple(slice(0, n) for n in index.shape)]
    if reduce == "add":
        return x.at[where].add(src)
    if reduce == "multiply":
        return x.at[where].multiply(src)
    return x.at[where].set(src)


def torch_scatter_add(x, dim, index, src):
    """``Tensor.scatter_add`` (out of place): sums ``src`` into ``x`` at ``index`` along ``dim``."""
    return torch_scatter(x, dim, index, src, reduce="add")




class TopKSetPool(nn.Module):
    """Scores set elements, keeps the k best (respecting a padding mask) and pools them."""
    dim: int = 8
    k: int = 3

    def setup(self):
        self.score = nn.Dense(features=1, kernel_init=torch_kaiming_uniform(self.dim), bias_init=torch_bias_uniform(self.dim))
        self.value = nn.Dense(features=self.dim, kernel_init=torch_kaiming_uniform(self.dim), bias_init=torch_bias_uniform(self.dim))

    def __call__(self, x, mask, train: bool = False):
        # x: (B, N, D), mask: (B, N) True where the element is real
        scores = torch_squeeze(self.score(x), -1)
        scores = jnp.where(~mask, -1e9, scores)
        top_scores, top_idx = torch_topk(scores, self.k, dim=1)
        idx = torch_expand(jnp.expand_dims(top_idx, -1), (-1, -1, x.shape[(-1)]))
        picked = torch_gather(x, 1, idx)
        weights = jax.nn.softmax(top_scores, axis=-1)
        pooled = jnp.einsum("bk,bkd->bd", weights, self.value(picked))
        return pooled, top_idx


class ScatterAggregate(nn.Module):
    """Message passing on an edge list: gather source nodes, scatter-add into targets."""
    dim: int = 8
    num_nodes: int = 5

    def setup(self):
        self.msg = nn.Dense(features=self.dim, kernel_init=torch_kaiming_uniform(self.dim), bias_init=torch_bias_uniform(self.dim))
        self.bilinear = self.param('bilinear', lambda rng_key: jax.random.normal(rng_key, (self.dim, self.dim)) * 0.1)

    def __call__(self, h, src, dst, train: bool = False):
        # h: (N, D) node features; src, dst: (E,) edge endpoints
        messages = self.msg(h[src])
        agg = jnp.zeros((self.num_nodes, h.shape[1]), dtype=h.dtype)
        agg = torch_scatter_add(agg, 0, jnp.broadcast_to(jnp.expand_dims(dst, 1), messages.shape), messages)
        deg = torch_scatter_add(jnp.zeros(self.num_nodes, dtype=h.dtype), 0, dst, jnp.ones_like(dst, dtype=h.dtype))
        agg = agg / jnp.expand_dims(jnp.clip(deg, min=1), 1)
        sim = jnp.einsum("nd,de,me->nm", h, self.bilinear, h)
        one_hot = torch_scatter(jnp.zeros_like(sim), 1, jnp.argmax(sim, axis=1, keepdims=True), 1.0)
        return agg + h, sim, one_hot
