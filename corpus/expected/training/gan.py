"""A GAN on a 2-D ring of Gaussians: generator and discriminator MLPs, two Adam optimizers
(betas=(0.5, 0.999)), BCEWithLogits, the discriminator step on ``fake.detach()`` and the
generator step through the freshly updated discriminator, latent noise from ``torch.randn``
in a seeded loop, samples drawn under ``no_grad`` at the end."""
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


def torch_squeeze(x, dim=None):
    """``torch.squeeze``: with ``dim`` (an int or a tuple), drop only those axes of size 1;
    axes of another size are kept (jnp.squeeze raises there)."""
    if dim is None:
        return jnp.squeeze(x)
    dims = dim if isinstance(dim, (tuple, list)) else (dim,)
    keep = tuple(d % x.ndim for d in dims if x.shape[d] == 1) if x.ndim else ()
    return jnp.squeeze(x, axis=keep) if keep else x


def torch_norm(x, p="fro", dim=None, keepdim=False):
    """``torch.norm`` / ``Tensor.norm``: a vector p-norm over ``dim`` (all elements when
    None, never a matrix norm), Frobenius for "fro", nuclear for "nuc"."""
    if p == "nuc":
        return jnp.linalg.norm(x, ord="nuc", axis=dim if dim is not None else (-2, -1), keepdims=keepdim)
    if p == "fro" or p is None:
        p = 2
    axis = tuple(dim) if isinstance(dim, (list, tuple)) else dim
    a = jnp.abs(x)
    if p == math.inf:
        return jnp.max(a, axis=axis, keepdims=keepdim)
    if p == -math.inf:
        return jnp.min(a, axis=axis, keepdims=keepdim)
    if p == 0:
        return jnp.sum(a != 0, axis=axis, keepdims=keepdim).astype(x.dtype)
    if p == 1:
        return jnp.sum(a, axis=axis, keepdims=keepdim)
    if p == 2:
        return jnp.sqrt(jnp.sum(a * a, axis=axis, keepdims=keepdim))
    return jnp.sum(a ** p, axis=axis, keepdims=keepdim) ** (1.0 / p)


def torch_reduce(loss, reduction="mean"):
    """Apply a torch loss ``reduction``: "mean", "sum" or "none"."""
    if reduction == "mean":
        return jnp.mean(loss)
    if reduction == "sum":
        return jnp.sum(loss)
    if reduction == "none":
        return loss
    raise ValueError(f"unknown reduction {reduction!r}")


def torch_binary_cross_entropy_with_logits(input, target, weight=None, reduction="mean", pos_weight=None):
    """``F.binary_cross_entropy_with_logits`` (numerically stable, optional ``pos_weight``)."""
    log_sig = jax.nn.log_sigmoid(input)
    log_sig_neg = jax.nn.log_sigmoid(-input)
    if pos_weight is not None:
        loss = -(pos_weight * target * log_sig + (1 - target) * log_sig_neg)
    else:
        loss = -(target * log_sig + (1 - target) * log_sig_neg)
    if weight is not None:
        loss = loss * weight
    return torch_reduce(loss, reduction)


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




class Generator(nn.Module):
    latent: int = 4
    hidden: int = 32

    def setup(self):
        self.net = Sequential([nn.Dense(features=self.hidden, kernel_init=torch_kaiming_uniform(self.latent), bias_init=torch_bias_uniform(self.latent)), nn.relu, nn.Dense(features=self.hidden, kernel_init=torch_kaiming_uniform(self.hidden), bias_init=torch_bias_uniform(self.hidden)), nn.relu, nn.Dense(features=2, kernel_init=torch_kaiming_uniform(self.hidden), bias_init=torch_bias_uniform(self.hidden))])

    def __call__(self, z, train: bool = False):
        return self.net(z, train=train)


class Discriminator(nn.Module):
    hidden: int = 32

    def setup(self):
        self.net = Sequential([nn.Dense(features=self.hidden, kernel_init=torch_kaiming_uniform(2), bias_init=torch_bias_uniform(2)), partial(nn.leaky_relu, negative_slope=0.2), nn.Dense(features=self.hidden, kernel_init=torch_kaiming_uniform(self.hidden), bias_init=torch_bias_uniform(self.hidden)), partial(nn.leaky_relu, negative_slope=0.2), nn.Dense(features=1, kernel_init=torch_kaiming_uniform(self.hidden), bias_init=torch_bias_uniform(self.hidden))])

    def __call__(self, x, train: bool = False):
        return torch_squeeze(self.net(x, train=train), -1)


@partial(jax.jit, static_argnames=('criterion',))
def train_step(discriminator_state, generator_state, z, ones, real, zeros, criterion):
    dropout_rng, rng = jax.random.split(discriminator_state.rng)

    def loss_fn(params):
        fake = generator_state.apply_fn({"params": generator_state.params}, z, train=True, rngs={"dropout": dropout_rng})
        d_loss = criterion(discriminator_state.apply_fn({"params": params}, real, train=True, rngs={"dropout": dropout_rng}), ones) + criterion(discriminator_state.apply_fn({"params": params}, jax.lax.stop_gradient(fake), train=True, rngs={"dropout": dropout_rng}), zeros)
        return d_loss
    d_loss, grads = jax.value_and_grad(loss_fn)(discriminator_state.params)
    discriminator_state = discriminator_state.apply_gradients(grads=grads, rng=rng)
    return discriminator_state, d_loss


@partial(jax.jit, static_argnames=('criterion',))
def train_step_2(generator_state, discriminator_state, z, ones, criterion):
    dropout_rng, rng = jax.random.split(generator_state.rng)

    def loss_fn(params):
        fake = generator_state.apply_fn({"params": params}, z, train=True, rngs={"dropout": dropout_rng})
        g_loss = criterion(discriminator_state.apply_fn({"params": discriminator_state.params}, fake, train=True, rngs={"dropout": dropout_rng}), ones)
        return g_loss
    g_loss, grads = jax.value_and_grad(loss_fn)(generator_state.params)
    generator_state = generator_state.apply_gradients(grads=grads, rng=rng)
    return generator_state, g_loss


def ring(rng, n, modes=6):
    angles = 2 * math.pi * rng.integers(0, modes, size=n) / modes
    points = np.stack([np.cos(angles), np.sin(angles)], axis=1) * 2.0
    return (points + 0.05 * rng.standard_normal((n, 2))).astype(np.float32)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--latent", type=int, default=4)
    args = parser.parse_args()
    rng_key = jax.random.PRNGKey(0)
    rng = np.random.default_rng(0)
    generator = Generator(latent=args.latent)
    discriminator = Discriminator()
    opt_g = optax.adam(learning_rate=2e-3, b1=0.5, b2=0.999)
    generator_state = None
    opt_d = optax.adam(learning_rate=2e-3, b1=0.5, b2=0.999)
    discriminator_state = None
    criterion = partial(torch_binary_cross_entropy_with_logits)
    ones = jnp.ones(args.batch)
    zeros = jnp.zeros(args.batch)
    for step in range(args.steps):
        real = jnp.asarray(ring(rng, args.batch))
        rng_key, sample_key = jax.random.split(rng_key)
        z = jax.random.normal(sample_key, (args.batch, args.latent))
        if generator_state is None:
            generator_state = create_train_state(generator, opt_g, jax.random.fold_in(jax.random.PRNGKey(0), 1), z)
        if discriminator_state is None:
            discriminator_state = create_train_state(discriminator, opt_d, jax.random.PRNGKey(0), real)
        discriminator_state, d_loss = train_step(discriminator_state, generator_state, z, ones, real, zeros, criterion)
        generator_state, g_loss = train_step_2(generator_state, discriminator_state, z, ones, criterion)
        print(f"step {step} d_loss={d_loss.item():.7f} g_loss={g_loss.item():.7f}")
    rng_key, sample_key = jax.random.split(rng_key)
    samples = eval_step(generator_state, jax.random.normal(sample_key, (256, args.latent)))
    radius = jnp.mean(torch_norm(samples, dim=1)).item()
    print(f"mean sample radius {radius:.3f} (data: 2.0)")


if __name__ == "__main__":
    main()
