"""Character-level language models with recurrent hidden state."""
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


def torch_normal_init(padding_idx=None):
    """N(0, 1) with row ``padding_idx`` zeroed: torch's default for Embedding weights."""
    def init(key, shape, dtype=jnp.float32):
        table = jax.random.normal(key, shape, dtype)
        if padding_idx is not None:
            table = table.at[padding_idx].set(0)
        return table
    return init


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


class TorchLSTMCell(nn.Module):
    """torch.nn.LSTMCell: ``h, c = cell(x, (h, c))``; ``hx`` defaults to zeros."""

    input_size: int
    hidden_size: int
    bias: bool = True
    proj_size: int = 0  # only used by TorchLSTM (torch's LSTMCell has no projection)

    def setup(self):
        init = torch_rnn_uniform(self.hidden_size)
        gates = 4 * self.hidden_size
        self.ih = nn.Dense(gates, use_bias=self.bias, kernel_init=init, bias_init=init)
        self.hh = nn.Dense(gates, use_bias=self.bias, kernel_init=init, bias_init=init)
        if self.proj_size > 0:
            self.hr = nn.Dense(self.proj_size, use_bias=False, kernel_init=init)

    def input_gates(self, x):
        return self.ih(x)

    def step(self, carry, gx):
        h, c = carry
        i, f, g, o = jnp.split(gx + self.hh(h), 4, axis=-1)
        c = nn.sigmoid(f) * c + nn.sigmoid(i) * jnp.tanh(g)
        h = nn.sigmoid(o) * jnp.tanh(c)
        if self.proj_size > 0:
            h = self.hr(h)
        return (h, c), h

    def zero_carry(self, batch_shape, dtype):
        out = self.proj_size if self.proj_size > 0 else self.hidden_size
        return (jnp.zeros(tuple(batch_shape) + (out,), dtype),
                jnp.zeros(tuple(batch_shape) + (self.hidden_size,), dtype))

    def __call__(self, input, hx=None):
        torch_rnn_cell_check("LSTMCell", input, self.input_size, [] if hx is None else [s.ndim for s in hx])
        carry = self.zero_carry(input.shape[:-1], input.dtype) if hx is None else tuple(hx)
        carry, _ = self.step(carry, self.input_gates(input))
        return carry


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


class TorchLSTM(TorchRNNBase):
    """torch.nn.LSTM: ``out, (h_n, c_n) = lstm(x)`` or ``lstm(x, (h_0, c_0))``."""

    proj_size: int = 0

    def make_cell(self, input_size, name):
        return TorchLSTMCell(input_size=input_size, hidden_size=self.hidden_size, bias=self.bias,
                             proj_size=self.proj_size, name=name)

    def output_size(self):
        return self.proj_size if self.proj_size > 0 else self.hidden_size

    def split_state(self, hx, index):
        return hx[0][index], hx[1][index]

    def join_state(self, carries):
        return jnp.stack([c[0] for c in carries]), jnp.stack([c[1] for c in carries])

    def state_ndim(self, hx):
        if hx[0].ndim != hx[1].ndim:
            raise ValueError("LSTM: h_0 and c_0 must have the same number of dimensions")
        return hx[0].ndim


class TorchGRU(TorchRNNBase):
    """torch.nn.GRU: ``out, h_n = gru(x)`` or ``gru(x, h_0)``."""

    def make_cell(self, input_size, name):
        return TorchGRUCell(input_size=input_size, hidden_size=self.hidden_size, bias=self.bias,
                            name=name)




class CharLSTM(nn.Module):
    vocab_size: int = 40
    embed_dim: int = 12
    hidden_size: int = 16
    num_layers: int = 2
    dropout: float = 0.1

    def setup(self):
        self.embed = nn.Embed(num_embeddings=self.vocab_size, features=self.embed_dim, embedding_init=torch_normal_init())
        self.lstm = TorchLSTM(input_size=self.embed_dim, hidden_size=self.hidden_size, num_layers=self.num_layers, batch_first=True, dropout=self.dropout)
        self.drop = nn.Dropout(rate=self.dropout)
        self.decoder = nn.Dense(features=self.vocab_size, kernel_init=torch_kaiming_uniform(self.hidden_size), bias_init=torch_bias_uniform(self.hidden_size))

    def __call__(self, x, hidden=None, train: bool = False):
        emb = self.embed(x)
        output, hidden = self.lstm(emb, hidden, train=train)
        output = self.drop(output, deterministic=not train)
        logits = self.decoder(output)
        return logits, hidden

    def init_hidden(self, batch_size):
        weight = next(self.parameters())
        return (jnp.zeros((self.num_layers, batch_size, self.hidden_size), weight.dtype),
                jnp.zeros((self.num_layers, batch_size, self.hidden_size), weight.dtype))


class CharGRU(nn.Module):
    vocab_size: int = 40
    hidden_size: int = 16

    def setup(self):
        self.encoder = nn.Embed(num_embeddings=self.vocab_size, features=self.hidden_size, embedding_init=torch_normal_init())
        self.gru = TorchGRU(input_size=self.hidden_size, hidden_size=self.hidden_size)
        self.decoder = nn.Dense(features=self.vocab_size, kernel_init=torch_kaiming_uniform(self.hidden_size), bias_init=torch_bias_uniform(self.hidden_size))

    def __call__(self, input, hidden, train: bool = False):
        # input: (seq_len, batch) as in the classic char-rnn tutorial
        output, hidden = self.gru(self.encoder(input), hidden, train=train)
        output = self.decoder(jnp.reshape(output, (-1, output.shape[2])))
        return output, hidden
