"""A GRU encoder-decoder with dot-product attention learning to reverse digit sequences:
teacher forcing with a decoder loop over target positions inside ``forward``, attention
weights from ``torch.bmm`` + softmax over the encoder outputs, ``CrossEntropyLoss`` with
``ignore_index`` for padding, Adam with gradient clipping, greedy accuracy under ``no_grad``."""
import argparse

import numpy as np
import jax
import jax.numpy as jnp
import flax.linen as nn
import optax
import math
from functools import partial
from typing import Any
from flax.training.train_state import TrainState as FlaxTrainState
import inspect


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


def torch_rnn_uniform(hidden_size):
    """torch's initialiser for every recurrent weight and bias: U(±1/sqrt(hidden_size))."""
    bound = 1.0 / hidden_size ** 0.5 if hidden_size > 0 else 0.0

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def torch_rnn_cell_check(name, input, input_size, state_ndims):
    """torch's checks on a cell call: input (N, input_size) or unbatched (input_size,), and a
    state of the same rank."""
    if input.ndim not in (1, 2) or input.shape[-1] != input_size:
        raise ValueError(f"{name}: expected input (N, {input_size}) or ({input_size},), "
                         f"got shape {tuple(input.shape)}")
    if any(ndim != input.ndim for ndim in state_ndims):
        raise ValueError(f"{name}: for {input.ndim}-D input the hidden state must be {input.ndim}-D")


class TorchGRUCell(nn.Module):
    """torch.nn.GRUCell: ``h = cell(x, h)``; ``hx`` defaults to zeros."""

    input_size: int
    hidden_size: int
    bias: bool = True

    def setup(self):
        init = torch_rnn_uniform(self.hidden_size)
        gates = 3 * self.hidden_size
        self.ih = nn.Dense(gates, use_bias=self.bias, kernel_init=init, bias_init=init)
        self.hh = nn.Dense(gates, use_bias=self.bias, kernel_init=init, bias_init=init)

    def input_gates(self, x):
        return self.ih(x)

    def step(self, h, gx):
        x_r, x_z, x_n = jnp.split(gx, 3, axis=-1)
        h_r, h_z, h_n = jnp.split(self.hh(h), 3, axis=-1)
        r = nn.sigmoid(x_r + h_r)
        z = nn.sigmoid(x_z + h_z)
        n = jnp.tanh(x_n + r * h_n)
        h = (1.0 - z) * n + z * h
        return h, h

    def zero_carry(self, batch_shape, dtype):
        return jnp.zeros(tuple(batch_shape) + (self.hidden_size,), dtype)

    def __call__(self, input, hx=None):
        torch_rnn_cell_check("GRUCell", input, self.input_size, [] if hx is None else [hx.ndim])
        h = self.zero_carry(input.shape[:-1], input.dtype) if hx is None else hx
        h, _ = self.step(h, self.input_gates(input))
        return h


class TorchRNNBase(nn.Module):
    """The multi-layer, optionally bidirectional stack shared by TorchLSTM/GRU/RNN.

    ``out, state = layer(x, hx=None, train=False)`` with torch's shapes: ``x`` is
    (L, N, H_in), (N, L, H_in) when ``batch_first``, or (L, H_in) unbatched; the state
    is (D * num_layers, N, H_out) ordered l0, l0_reverse, l1, ... (N dropped when
    unbatched); ``out`` is (L, N, D * H_out). Dropout between layers only when ``train``
    (rng stream 'dropout').
    """

    input_size: int
    hidden_size: int
    num_layers: int = 1
    bias: bool = True
    batch_first: bool = False
    dropout: float = 0.0
    bidirectional: bool = False

    def make_cell(self, input_size, name):
        raise NotImplementedError

    def flatten_parameters(self):
        """torch's cuDNN weight-packing call: nothing to do here."""
        return None

    def output_size(self):
        return self.hidden_size

    # state layout: subclasses with a (h, c) state override these two
    def split_state(self, hx, index):
        return hx[index]

    def join_state(self, carries):
        return jnp.stack(carries)

    def state_ndim(self, hx):
        return hx.ndim

    @nn.compact
    def __call__(self, input, hx=None, train: bool = False):
        name = type(self).__name__
        batched = input.ndim == 3
        if input.ndim not in (2, 3) or input.shape[-1] != self.input_size:
            raise ValueError(f"{name}: expected input (L, N, {self.input_size}), (N, L, {self.input_size}) "
                             f"or unbatched (L, {self.input_size}); got {tuple(input.shape)}")
        if hx is not None and self.state_ndim(hx) != input.ndim:
            raise ValueError(f"{name}: for {input.ndim}-D input the hidden state must be "
                             f"{input.ndim}-D")
        if not batched:
            x = input[:, None, :]
            if hx is not None:
                hx = jax.tree_util.tree_map(lambda s: s[:, None, :], hx)
        elif self.batch_first:
            x = jnp.swapaxes(input, 0, 1)
        else:
            x = input
        directions = 2 if self.bidirectional else 1
        size = self.input_size
        carries = []
        for layer in range(self.num_layers):
            outputs = []
            for d in range(directions):
                cell = self.make_cell(size, f"l{layer}" + ("_reverse" if d else ""))
                if hx is None:
                    carry = cell.zero_carry(x.shape[1:2], x.dtype)
                else:
                    carry = self.split_state(hx, layer * directions + d)
                scan = nn.scan(lambda c, carry, gx: c.step(carry, gx),
                               variable_broadcast="params", split_rngs={"params": False},
                               reverse=d == 1)
                carry, y = scan(cell, carry, cell.input_gates(x))
                carries.append(carry)
                outputs.append(y)
            x = outputs[0] if directions == 1 else jnp.concatenate(outputs, axis=-1)
            size = self.output_size() * directions
            if layer < self.num_layers - 1 and self.dropout > 0:
                x = nn.Dropout(rate=self.dropout)(x, deterministic=not train)
        state = self.join_state(carries)
        if not batched:
            return x[:, 0, :], jax.tree_util.tree_map(lambda s: s[:, 0, :], state)
        if self.batch_first:
            x = jnp.swapaxes(x, 0, 1)
        return x, state


class TorchGRU(TorchRNNBase):
    """torch.nn.GRU: ``out, h_n = gru(x)`` or ``gru(x, h_0)``."""

    def make_cell(self, input_size, name):
        return TorchGRUCell(input_size=input_size, hidden_size=self.hidden_size, bias=self.bias,
                            name=name)


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


def model_variables(state):
    """The variables ``apply`` takes (what torch's ``model.state_dict()`` holds)."""
    if state.batch_stats:
        return {"params": state.params, "batch_stats": state.batch_stats}
    return {"params": state.params}


@jax.jit
def eval_step(state, *inputs):
    """The model's forward pass in eval mode (``model.eval()``: dropout off, BatchNorm running
    stats); a model that samples (``torch.randn_like`` in forward) draws from the state's key."""
    return state.apply_fn(model_variables(state), *inputs, train=False, rngs={"sample": state.rng})


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



PAD, BOS = 0, 1


class Seq2Seq(nn.Module):
    vocab: int = 12
    dim: int = 32

    def setup(self):
        self.embed = nn.Embed(num_embeddings=self.vocab, features=self.dim, embedding_init=torch_normal_init())
        self.encoder = TorchGRU(input_size=self.dim, hidden_size=self.dim, batch_first=True)
        self.decoder = TorchGRU(input_size=2 * self.dim, hidden_size=self.dim, batch_first=True)
        self.out = nn.Dense(features=self.vocab, kernel_init=torch_kaiming_uniform(2 * self.dim), bias_init=torch_bias_uniform(2 * self.dim))

    def __call__(self, src, tgt_in, train: bool = False):
        enc, h = self.encoder(self.embed(src), train=train)
        context = jnp.zeros((src.shape[0], 1, enc.shape[2]))
        logits = []
        for t in range(tgt_in.shape[1]):
            step_in = jnp.concatenate([self.embed(tgt_in[:, t:t + 1]), context], axis=2)
            dec, h = self.decoder(step_in, h, train=train)
            scores = jnp.matmul(dec, jnp.swapaxes(enc, 1, 2))
            weights = jax.nn.softmax(scores, axis=-1)
            context = jnp.matmul(weights, enc)
            logits.append(self.out(jnp.concatenate([dec, context], axis=2)))
        return jnp.concatenate(logits, axis=1)


@partial(jax.jit, static_argnames=('criterion',))
def train_step(train_state, src, tgt_in, tgt, criterion):
    dropout_rng, rng = jax.random.split(train_state.rng)

    def loss_fn(params):
        logits = train_state.apply_fn({"params": params}, src, tgt_in, train=True, rngs={"dropout": dropout_rng})
        loss = criterion(jnp.reshape(logits, (-1, logits.shape[-1])), jnp.reshape(tgt, -1))
        return loss
    loss, grads = jax.value_and_grad(loss_fn)(train_state.params)
    grads, _ = torch_clip_grad_norm(grads, 1.0)
    train_state = train_state.apply_gradients(grads=grads, rng=rng)
    return train_state, loss


def make_batch(rng, batch, length):
    src = rng.integers(2, 12, size=(batch, length))
    tgt = src[:, ::-1]
    tgt_in = np.concatenate([np.full((batch, 1), BOS), tgt[:, :-1]], axis=1)
    return (jnp.asarray(src.astype(np.int64)), jnp.asarray(np.ascontiguousarray(tgt_in).astype(np.int64)),
            jnp.asarray(np.ascontiguousarray(tgt).astype(np.int64)))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--length", type=int, default=5)
    args = parser.parse_args()
    rng = np.random.default_rng(4)
    model = Seq2Seq()
    criterion = partial(torch_cross_entropy, ignore_index=PAD)
    optimizer = optax.adam(learning_rate=5e-3)
    train_state = None
    for step in range(args.steps):
        src, tgt_in, tgt = make_batch(rng, 32, args.length)
        if train_state is None:
            train_state = create_train_state(model, optimizer, jax.random.PRNGKey(0), src, tgt_in)
        train_state, loss = train_step(train_state, src, tgt_in, tgt, criterion)
        print(f"step {step} loss={loss.item():.7f}")
    src, tgt_in, tgt = make_batch(rng, 64, args.length)
    accuracy = jnp.mean((jnp.argmax(eval_step(train_state, src, tgt_in), axis=-1) == tgt).astype(jnp.float32)).item()
    print(f"teacher-forced token accuracy {accuracy:.3f}")


if __name__ == "__main__":
    main()
