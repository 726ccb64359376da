"""A fully connected variational autoencoder."""
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


def torch_reduce(loss, reduction="mean"):
    """Apply a torch loss ``reduction``: "mean", "sum" or "none"."""
    if reduction == "mean":
        return jnp.mean(loss)
    if reduction == "sum":
        return jnp.sum(loss)
    if reduction == "none":
        return loss
    raise ValueError(f"unknown reduction {reduction!r}")


def torch_binary_cross_entropy(input, target, weight=None, reduction="mean"):
    """``F.binary_cross_entropy`` on probabilities; logs are clamped at -100 like torch."""
    log_p = jnp.maximum(jnp.log(input), -100.0)
    log_q = jnp.maximum(jnp.log1p(-input), -100.0)
    loss = -(target * log_p + (1 - target) * log_q)
    if weight is not None:
        loss = loss * weight
    return torch_reduce(loss, reduction)




class VAE(nn.Module):
    input_dim: int = 36
    hidden_dim: int = 24
    latent_dim: int = 4

    def setup(self):
        self.fc1 = nn.Dense(features=self.hidden_dim, kernel_init=torch_kaiming_uniform(self.input_dim), bias_init=torch_bias_uniform(self.input_dim))
        self.fc21 = nn.Dense(features=self.latent_dim, kernel_init=torch_kaiming_uniform(self.hidden_dim), bias_init=torch_bias_uniform(self.hidden_dim))
        self.fc22 = nn.Dense(features=self.latent_dim, kernel_init=torch_kaiming_uniform(self.hidden_dim), bias_init=torch_bias_uniform(self.hidden_dim))
        self.fc3 = nn.Dense(features=self.hidden_dim, kernel_init=torch_kaiming_uniform(self.latent_dim), bias_init=torch_bias_uniform(self.latent_dim))
        self.fc4 = nn.Dense(features=self.input_dim, kernel_init=torch_kaiming_uniform(self.hidden_dim), bias_init=torch_bias_uniform(self.hidden_dim))

    def encode(self, x):
        h1 = jax.nn.relu(self.fc1(x))
        return self.fc21(h1), self.fc22(h1)

    def reparameterize(self, mu, logvar):
        std = jnp.exp(0.5 * logvar)
        eps = jax.random.normal(self.make_rng("sample"), std.shape, std.dtype)
        return mu + eps * std

    def decode(self, z):
        h3 = jax.nn.relu(self.fc3(z))
        return jax.nn.sigmoid(self.fc4(h3))

    def __call__(self, x, train: bool = False):
        mu, logvar = self.encode(jnp.reshape(x, (-1, self.input_dim)))
        z = self.reparameterize(mu, logvar)
        return self.decode(z), mu, logvar


def loss_function(recon_x, x, mu, logvar):
    bce = torch_binary_cross_entropy(recon_x, jnp.reshape(x, (-1, recon_x.shape[1])), reduction="sum")
    kld = -0.5 * jnp.sum(1 + logvar - jnp.power(mu, 2) - jnp.exp(logvar))
    return bce + kld
