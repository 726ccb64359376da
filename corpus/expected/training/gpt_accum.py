"""A tiny GPT language model trained the nanoGPT way: AdamW with decay / no-decay parameter
groups chosen by ndim and name, a warm-up + cosine learning rate written by hand into
``optimizer.param_groups``, gradient accumulation over micro-batches (loss / accum, one
optimizer step per outer iteration) and ``clip_grad_norm_`` on the accumulated gradients."""
import argparse
import math

import numpy as np
import jax
import jax.numpy as jnp
import flax.linen as nn
import optax
from functools import partial
from typing import Any
from typing import Sequence
import inspect
from flax.training.train_state import TrainState as FlaxTrainState


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


def torch_normal_init(padding_idx=None):
    """N(0, 1) with row ``padding_idx`` zeroed: torch's default for Embedding weights."""
    def init(key, shape, dtype=jnp.float32):
        table = jax.random.normal(key, shape, dtype)
        if padding_idx is not None:
            table = table.at[padding_idx].set(0)
        return table
    return init


def ntuple(value, n):
    """``value`` repeated ``n`` times if it is a scalar, else as a tuple."""
    if isinstance(value, (int, float)):
        return (value,) * n
    return tuple(value)


class LayerNormLastAxes(nn.Module):
    """torch.nn.LayerNorm: normalises over the last ``len(normalized_shape)`` axes;
    ``scale``/``bias`` have shape ``normalized_shape`` (two-pass variance, like torch)."""
    normalized_shape: Any
    epsilon: float = 1e-5
    use_scale: bool = True
    use_bias: bool = True
    scale_init: Any = nn.initializers.ones_init()
    bias_init: Any = nn.initializers.zeros_init()

    @nn.compact
    def __call__(self, x):
        shape = ntuple(self.normalized_shape, 1)
        axes = tuple(range(-len(shape), 0))
        mean = jnp.mean(x, axis=axes, keepdims=True)
        centred = x - mean
        mul = jax.lax.rsqrt(jnp.mean(jnp.square(centred), axis=axes, keepdims=True) + self.epsilon)
        if self.use_scale:   # scale folded into the per-row factor: one full-size product less
            mul = mul * self.param("scale", self.scale_init, shape)
        y = centred * mul
        if self.use_bias:
            y = y + self.param("bias", self.bias_init, shape)
        return y


def call_layer(layer, x, train):
    """Call one layer of a converted container, passing the training flag the way it takes it."""
    if not isinstance(layer, nn.Module):
        return layer(x)
    params = inspect.signature(type(layer).__call__).parameters
    if "train" in params:
        return layer(x, train=train)
    if "deterministic" in params:
        return layer(x, deterministic=not train)
    if "use_running_average" in params:
        return layer(x, use_running_average=not train)
    return layer(x)


class Sequential(nn.Module):
    """torch.nn.Sequential: applies `layers` in order; children are named layers_{i}."""
    layers: Sequence[Any]

    def __call__(self, x, train: bool = False):
        for layer in self.layers:
            x = call_layer(layer, x, train)
        return x

    def __getitem__(self, index):
        return self.layers[index]


def torch_split(x, split_size_or_sections, dim=0):
    """``torch.split``: an int is a chunk *size* (the last chunk may be smaller); a list gives
    the size of each piece (``jnp.split`` takes counts or cut indices instead)."""
    size = x.shape[dim]
    if isinstance(split_size_or_sections, int):
        cuts = list(range(split_size_or_sections, size, split_size_or_sections))
    else:
        cuts, total = [], 0
        for part in list(split_size_or_sections)[:-1]:
            total += int(part)
            cuts.append(total)
    return tuple(jnp.split(x, cuts, axis=dim))


def torch_reduce(loss, reduction="mean"):
    """Apply a torch loss ``reduction``: "mean", "sum" or "none"."""
    if reduction == "mean":
        return jnp.mean(loss)
    if reduction == "sum":
        return jnp.sum(loss)
    if reduction == "none":
        return loss
    raise ValueError(f"unknown reduction {reduction!r}")


def torch_nll_loss(input, target, weight=None, ignore_index=-100, reduction="mean"):
    """``F.nll_loss`` on log-probabilities with classes on axis 1 (axis 0 when unbatched);
    "mean" divides by the summed weights of the targets that are not ``ignore_index``."""
    axis = 1 if input.ndim > 1 else 0
    valid = target != ignore_index
    safe = jnp.where(valid, target, 0)
    picked = jnp.squeeze(jnp.take_along_axis(input, jnp.expand_dims(safe, axis), axis=axis), axis)
    w = jnp.ones_like(picked) if weight is None else weight[safe]
    w = jnp.where(valid, w, 0.0)
    loss = -picked * w
    if reduction == "mean":
        return jnp.sum(loss) / jnp.sum(w)
    return torch_reduce(loss, reduction)


def torch_cross_entropy(input, target, weight=None, ignore_index=-100, reduction="mean", label_smoothing=0.0):
    """``F.cross_entropy``: logits with classes on axis 1 (axis 0 when unbatched); ``target``
    holds class indices (honouring ``weight``, ``ignore_index``, ``label_smoothing``) or,
    when it has the input's shape and a float dtype, class probabilities."""
    axis = 1 if input.ndim > 1 else 0
    classes = input.shape[axis]
    logp = jax.nn.log_softmax(input, axis=axis)
    wshape = [1] * input.ndim
    wshape[axis] = classes
    if jnp.issubdtype(target.dtype, jnp.floating):
        if label_smoothing:
            target = target * (1 - label_smoothing) + label_smoothing / classes
        weighted = logp if weight is None else logp * weight.reshape(wshape)
        loss = -jnp.sum(weighted * target, axis=axis)
        if reduction == "mean":
            return jnp.sum(loss) / (loss.size if loss.ndim else 1)
        return torch_reduce(loss, reduction)
    nll = torch_nll_loss(logp, target, weight, ignore_index, reduction)
    if not label_smoothing:
        return nll
    valid = target != ignore_index
    weighted = logp if weight is None else logp * weight.reshape(wshape)
    smooth = jnp.where(valid, -jnp.sum(weighted, axis=axis), 0.0)
    if reduction == "mean":
        if weight is None:
            smooth = jnp.sum(smooth) / jnp.sum(valid)
        else:
            smooth = jnp.sum(smooth) / jnp.sum(jnp.where(valid, weight[jnp.where(valid, target, 0)], 0.0))
    else:
        smooth = torch_reduce(smooth, reduction)
    return (1 - label_smoothing) * nll + label_smoothing / classes * smooth


class TrainState(FlaxTrainState):
    """flax's TrainState plus the model's ``batch_stats`` (empty without BatchNorm) and the
    PRNG key that ``train_step`` splits for dropout at every step."""
    batch_stats: Any = None
    rng: Any = None


def apply_with_train_flag(model):
    """``model.apply``, taking the ``train`` flag that converted modules take. A model whose
    ``__call__`` has no such parameter (a bare flax layer such as ``nn.Dense``, converted from
    a bare ``nn.Linear`` model) is applied without it."""
    if "train" in inspect.signature(type(model).__call__).parameters:
        return model.apply

    def apply(variables, *inputs, train=False, **kwargs):
        return model.apply(variables, *inputs, **kwargs)
    return apply


def create_train_state(model, tx, rng, *inputs):
    """Initialise ``model`` on a first batch (``model.init``) and wrap it in a TrainState."""
    params_rng, dropout_rng, rng = jax.random.split(rng, 3)
    sample_rng = jax.random.fold_in(dropout_rng, 1)
    variables = model.init({"params": params_rng, "dropout": dropout_rng, "sample": sample_rng}, *inputs)
    return TrainState.create(apply_fn=apply_with_train_flag(model), params=variables["params"], tx=tx,
                             batch_stats=variables.get("batch_stats", {}), rng=rng)


def torch_clip_grad_norm(grads, max_norm, norm_type=2.0):
    """``torch.nn.utils.clip_grad_norm_``: scale all gradients by max_norm / (total_norm + 1e-6)
    when that is below 1. Returns the clipped gradients and the total norm."""
    leaves = jax.tree_util.tree_leaves(grads)
    if norm_type == math.inf:
        total = jnp.max(jnp.stack([jnp.max(jnp.abs(g)) for g in leaves]))
    else:
        total = jnp.sum(jnp.stack([jnp.sum(jnp.abs(g) ** norm_type) for g in leaves])) ** (1.0 / norm_type)
    scale = jnp.minimum(max_norm / (total + 1e-6), 1.0)
    return jax.tree_util.tree_map(lambda g: g * scale, grads), total


def _is_injected(node):
    return isinstance(node, (optax.InjectHyperparamsState, optax.InjectStatefulHyperparamsState))


def set_learning_rate(opt_state, lr):
    """``opt_state`` with every injected ``learning_rate`` set to ``lr`` (dtype kept, so a
    jitted train_step is not recompiled)."""
    def replace(node):
        if _is_injected(node) and "learning_rate" in node.hyperparams:
            old = node.hyperparams["learning_rate"]
            return node._replace(hyperparams={**node.hyperparams,
                                              "learning_rate": jnp.asarray(lr, dtype=jnp.asarray(old).dtype)})
        return node
    return jax.tree_util.tree_map(replace, opt_state, is_leaf=_is_injected)


def torch_param_name(path):
    """The torch-style name of a flax parameter path, for the name tests of parameter groups
    (``named_parameters()``): keys joined with '.', Sequential children ``layers_3`` → ``3``,
    list/dict children ``blocks_0`` → ``blocks.0``, and flax's ``kernel``/``scale``/
    ``embedding`` leaves → ``weight``."""
    keys = [str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path]
    out = []
    for i, key in enumerate(keys):
        head, _, tail = key.rpartition("_")
        if i == len(keys) - 1 and key in ("kernel", "scale", "embedding"):
            out.append("weight")
        elif head == "layers" and tail.isdigit():
            out.append(tail)
        elif head and tail.isdigit():
            out += [head, tail]
        else:
            out.append(key)
    return ".".join(out)


def param_group_labels(groups):
    """``optax.multi_transform`` labels for torch parameter groups: ``groups`` maps a label
    to a predicate ``select(name, param)`` (name as ``torch_param_name`` gives it); a
    parameter gets the first label whose predicate holds, or "frozen" (torch does not
    update parameters that are in no group)."""
    def labels(params):
        def label(path, param):
            name = torch_param_name(path)
            for key, select in groups.items():
                if select(name, param):
                    return key
            return "frozen"
        return jax.tree_util.tree_map_with_path(label, params)
    return labels


def set_optimizer_lr(state, tx, lr):
    """``for g in optimizer.param_groups: g["lr"] = lr``: the learning rate of every
    ``optax.inject_hyperparams`` state set to ``lr``. Returns ``(state, tx)``: before the
    training state exists (``state is None``) the optimizer is rebuilt so that its state
    starts at ``lr``, as the first torch step would use it."""
    if state is not None:
        return state.replace(opt_state=set_learning_rate(state.opt_state, lr)), tx
    update = tx.update

    def init(params):
        return set_learning_rate(tx.init(params), lr)

    return None, optax.GradientTransformationExtraArgs(init, update)


def torch_clip_by_norm(max_norm, norm_type=2.0):
    """``clip_grad_norm_`` as an optax transformation (torch's max_norm / (norm + 1e-6) scale),
    for gradients that an accumulating optimizer clips once per step."""
    def init(params):
        return optax.EmptyState()

    def update(updates, state, params=None):
        return torch_clip_grad_norm(updates, max_norm, norm_type)[0], state

    return optax.GradientTransformation(init, update)




class Block(nn.Module):
    dim: Any
    heads: Any
    block_size: Any

    def setup(self):
        self.ln1 = LayerNormLastAxes(normalized_shape=self.dim, epsilon=1e-05, use_bias=True)
        self.qkv = nn.Dense(features=3 * self.dim, kernel_init=torch_kaiming_uniform(self.dim), bias_init=torch_bias_uniform(self.dim))
        self.proj = nn.Dense(features=self.dim, kernel_init=torch_kaiming_uniform(self.dim), bias_init=torch_bias_uniform(self.dim))
        self.ln2 = LayerNormLastAxes(normalized_shape=self.dim, epsilon=1e-05, use_bias=True)
        self.mlp = Sequential([nn.Dense(features=4 * self.dim, kernel_init=torch_kaiming_uniform(self.dim), bias_init=torch_bias_uniform(self.dim)), partial(nn.gelu, approximate=False), nn.Dense(features=self.dim, kernel_init=torch_kaiming_uniform(4 * self.dim), bias_init=torch_bias_uniform(4 * self.dim))])
        self.mask = jnp.reshape(jnp.tril(jnp.ones((self.block_size, self.block_size))), (1, 1, self.block_size, self.block_size))

    def __call__(self, x, train: bool = False):
        b, t, c = x.shape
        q, k, v = torch_split(self.qkv(self.ln1(x)), c, dim=2)
        q = jnp.swapaxes(jnp.reshape(q, (b, t, self.heads, c // self.heads)), 1, 2)
        k = jnp.swapaxes(jnp.reshape(k, (b, t, self.heads, c // self.heads)), 1, 2)
        v = jnp.swapaxes(jnp.reshape(v, (b, t, self.heads, c // self.heads)), 1, 2)
        att = (q @ jnp.swapaxes(k, -2, -1)) * (1.0 / math.sqrt(k.shape[(-1)]))
        att = jnp.where(self.mask[:, :, :t, :t] == 0, float("-inf"), att)
        att = jax.nn.softmax(att, axis=-1)
        y = jnp.reshape(jnp.swapaxes(att @ v, 1, 2), (b, t, c))
        x = x + self.proj(y)
        return x + self.mlp(self.ln2(x), train=train)


class GPT(nn.Module):
    vocab: int = 16
    dim: int = 32
    heads: int = 2
    layers: int = 2
    block_size: int = 8

    def setup(self):
        self.tok_emb = nn.Embed(num_embeddings=self.vocab, features=self.dim, embedding_init=torch_normal_init())
        self.pos_emb = self.param('pos_emb', lambda rng_key: jnp.zeros((1, self.block_size, self.dim)))
        self.blocks = [Block(self.dim, self.heads, self.block_size) for _ in range(self.layers)]
        self.ln_f = LayerNormLastAxes(normalized_shape=self.dim, epsilon=1e-05, use_bias=True)
        self.head = nn.Dense(features=self.vocab, kernel_init=torch_kaiming_uniform(self.dim), bias_init=torch_bias_uniform(self.dim))

    def __call__(self, idx, train: bool = False):
        t = idx.shape[1]
        x = self.tok_emb(idx) + self.pos_emb[:, :t, :]
        for block in self.blocks:
            x = block(x, train=train)
        return self.head(self.ln_f(x))


@partial(jax.jit, static_argnames=('args_accum', 'vocab'))
def train_step(train_state, xb, yb, args_accum, vocab):
    dropout_rng, rng = jax.random.split(train_state.rng)

    def loss_fn(params):
        logits = train_state.apply_fn({"params": params}, xb, train=True, rngs={"dropout": dropout_rng})
        loss = torch_cross_entropy(jnp.reshape(logits, (-1, vocab)), jnp.reshape(yb, -1)) / args_accum
        return loss
    loss, grads = jax.value_and_grad(loss_fn)(train_state.params)
    train_state = train_state.apply_gradients(grads=grads, rng=rng)
    return train_state, loss


def get_lr(it, warmup, max_iters, max_lr, min_lr):
    if it < warmup:
        return max_lr * (it + 1) / warmup
    ratio = (it - warmup) / max(1, max_iters - warmup)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (max_lr - min_lr)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--iters", type=int, default=12)
    parser.add_argument("--accum", type=int, default=2)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--lr", type=float, default=3e-3)
    args = parser.parse_args()
    block_size, vocab = 8, 16
    rng = np.random.default_rng(0)
    # a noisy counting sequence: the next token is mostly the current one plus one
    data = np.cumsum(rng.integers(1, 3, size=4096)) % vocab

    def get_batch():
        starts = rng.integers(0, len(data) - block_size - 1, size=args.batch)
        x = np.stack([data[s:s + block_size] for s in starts]).astype(np.int64)
        y = np.stack([data[s + 1:s + block_size + 1] for s in starts]).astype(np.int64)
        return jnp.asarray(x), jnp.asarray(y)

    model = GPT(vocab=vocab, block_size=block_size)
    decay = lambda n, p: p.ndim >= 2 and "pos_emb" not in n
    no_decay = lambda n, p: p.ndim < 2 or "pos_emb" in n
    optimizer = optax.multi_transform({"decay": optax.inject_hyperparams(optax.adamw)(learning_rate=args.lr, b1=0.9, b2=0.95, weight_decay=0.1), "no_decay": optax.inject_hyperparams(optax.adamw)(learning_rate=args.lr, b1=0.9, b2=0.95, weight_decay=0.0), "frozen": optax.set_to_zero()}, param_group_labels({"decay": decay, "no_decay": no_decay}))
    train_state = None
    for it in range(args.iters):
        lr = get_lr(it, 3, args.iters, args.lr, args.lr / 10)
        train_state, optimizer = set_optimizer_lr(train_state, optimizer, lr)
        for micro in range(args.accum):
            xb, yb = get_batch()
            if train_state is None:
                train_state = create_train_state(model, optax.MultiSteps(optax.chain(torch_clip_by_norm(1.0), optimizer), every_k_schedule=args.accum, use_grad_mean=False).gradient_transformation(), jax.random.PRNGKey(0), xb)
            train_state, loss = train_step(train_state, xb, yb, args.accum, vocab)
        print(f"iter {it} lr {lr:.5f} loss={loss.item() * args.accum:.7f}")


if __name__ == "__main__":
    main()
