"""A variational autoencoder on synthetic low-rank data: the reparameterisation trick with
``torch.randn_like`` inside ``forward``, a seeded script (``torch.manual_seed``) that shuffles
with ``torch.randperm`` every epoch and corrupts its inputs with ``torch.randn_like`` noise
(a denoising VAE), a summed reconstruction + KL loss in a helper function, Adam."""
import argparse

import numpy as np
import jax
import jax.numpy as jnp
import flax.linen as nn
import optax
import math
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


def torch_reduce(loss, reduction="mean"):
    """Apply a torch loss ``reduction``: "mean", "sum" or "none"."""
    if reduction == "mean":
        return jnp.mean(loss)
    if reduction == "sum":
        return jnp.sum(loss)
    if reduction == "none":
        return loss
    raise ValueError(f"unknown reduction {reduction!r}")


def torch_mse_loss(input, target, reduction="mean"):
    """``F.mse_loss``."""
    return torch_reduce(jnp.square(input - target), reduction)


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




class VAE(nn.Module):
    n_in: int = 24
    hidden: int = 48
    latent: int = 4

    def setup(self):
        self.enc = Sequential([nn.Dense(features=self.hidden, kernel_init=torch_kaiming_uniform(self.n_in), bias_init=torch_bias_uniform(self.n_in)), nn.relu])
        self.mu = nn.Dense(features=self.latent, kernel_init=torch_kaiming_uniform(self.hidden), bias_init=torch_bias_uniform(self.hidden))
        self.logvar = nn.Dense(features=self.latent, kernel_init=torch_kaiming_uniform(self.hidden), bias_init=torch_bias_uniform(self.hidden))
        self.dec = Sequential([nn.Dense(features=self.hidden, kernel_init=torch_kaiming_uniform(self.latent), bias_init=torch_bias_uniform(self.latent)), nn.relu, nn.Dense(features=self.n_in, kernel_init=torch_kaiming_uniform(self.hidden), bias_init=torch_bias_uniform(self.hidden))])

    def __call__(self, x, train: bool = False):
        h = self.enc(x, train=train)
        mu, logvar = self.mu(h), self.logvar(h)
        std = jnp.exp(0.5 * logvar)
        z = mu + std * jax.random.normal(self.make_rng("sample"), std.shape, std.dtype)
        return self.dec(z, train=train), mu, logvar


@jax.jit
def train_step(train_state, noisy, xb):
    dropout_rng, sample_rng, rng = jax.random.split(train_state.rng, 3)

    def loss_fn(params):
        recon, mu, logvar = train_state.apply_fn({"params": params}, noisy, train=True, rngs={"dropout": dropout_rng, "sample": sample_rng})
        loss = vae_loss(recon, xb, mu, logvar)
        return loss
    loss, grads = jax.value_and_grad(loss_fn)(train_state.params)
    train_state = train_state.apply_gradients(grads=grads, rng=rng)
    return train_state, loss


def vae_loss(recon, x, mu, logvar):
    rec = torch_mse_loss(recon, x, "sum") / x.shape[0]
    kld = -0.5 * jnp.sum(1 + logvar - jnp.power(mu, 2) - jnp.exp(logvar)) / x.shape[0]
    return rec + kld


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--noise", type=float, default=0.05)
    args = parser.parse_args()
    rng_key = jax.random.PRNGKey(0)
    rng = np.random.default_rng(0)
    codes = rng.standard_normal((128, 4)).astype(np.float32)
    data = jnp.asarray(np.tanh(codes @ rng.standard_normal((4, 24)).astype(np.float32)))
    model = VAE()
    optimizer = optax.adam(learning_rate=3e-3)
    train_state = None
    n = data.shape[0]
    for epoch in range(args.epochs):
        rng_key, sample_key = jax.random.split(rng_key)
        perm = jax.random.permutation(sample_key, n)
        for i in range(0, n, args.batch):
            xb = data[perm[i:i + args.batch]]
            rng_key, sample_key = jax.random.split(rng_key)
            noisy = xb + args.noise * jax.random.normal(sample_key, xb.shape, xb.dtype)
            if train_state is None:
                train_state = create_train_state(model, optimizer, jax.random.PRNGKey(0), noisy)
            train_state, loss = train_step(train_state, noisy, xb)
            print(f"epoch {epoch} loss={loss.item():.7f}")


if __name__ == "__main__":
    main()
