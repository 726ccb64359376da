"""torch.distributions counterparts. JAX sampling needs a key: the converter passes one at
construction (``rng_key``), and each ``sample()`` splits it, so repeated draws differ."""
import math

import jax
import jax.numpy as jnp


class Categorical:
    """torch.distributions.Categorical over the last axis, from ``probs`` or ``logits``."""

    def __init__(self, probs=None, logits=None, validate_args=None, rng_key=None):
        if (probs is None) == (logits is None):
            raise ValueError("Categorical needs exactly one of probs or logits")
        if probs is not None:
            probs = probs / jnp.sum(probs, axis=-1, keepdims=True)
            self.logits = jnp.log(probs)
        else:
            self.logits = logits - jax.nn.logsumexp(logits, axis=-1, keepdims=True)
        self.probs = jnp.exp(self.logits)
        self._key = rng_key

    def _next_key(self):
        if self._key is None:
            raise ValueError("sampling needs a PRNG key: pass rng_key=... to the distribution")
        self._key, key = jax.random.split(self._key)
        return key

    def sample(self, sample_shape=()):
        shape = tuple(sample_shape) + self.logits.shape[:-1]
        return jax.random.categorical(self._next_key(), self.logits, axis=-1, shape=shape)

    def log_prob(self, value):
        value = jnp.asarray(value).astype(jnp.int32)
        return jnp.take_along_axis(self.logits, value[..., None], axis=-1)[..., 0]

    def entropy(self):
        return -jnp.sum(self.probs * self.logits, axis=-1)


class Normal:
    """torch.distributions.Normal(loc, scale)."""

    def __init__(self, loc, scale, validate_args=None, rng_key=None):
        self.loc = jnp.asarray(loc)
        self.scale = jnp.asarray(scale)
        self._key = rng_key

    def _next_key(self):
        if self._key is None:
            raise ValueError("sampling needs a PRNG key: pass rng_key=... to the distribution")
        self._key, key = jax.random.split(self._key)
        return key

    def sample(self, sample_shape=()):
        shape = tuple(sample_shape) + jnp.broadcast_shapes(self.loc.shape, self.scale.shape)
        noise = jax.random.normal(self._next_key(), shape)
        return jax.lax.stop_gradient(self.loc + noise * self.scale)

    def rsample(self, sample_shape=()):
        shape = tuple(sample_shape) + jnp.broadcast_shapes(self.loc.shape, self.scale.shape)
        return self.loc + jax.random.normal(self._next_key(), shape) * self.scale

    def log_prob(self, value):
        var = self.scale ** 2
        return -((value - self.loc) ** 2) / (2 * var) - jnp.log(self.scale) - math.log(math.sqrt(2 * math.pi))

    def entropy(self):
        return 0.5 + 0.5 * math.log(2 * math.pi) + jnp.log(self.scale) * jnp.ones_like(self.loc)

    @property
    def mean(self):
        return self.loc

    @property
    def stddev(self):
        return self.scale
