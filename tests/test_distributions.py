"""torch.distributions → transpiler/prelude/distributions.py, through the real converter."""
import textwrap

import numpy as np
import pytest

from transpiler.api import convert_source

torch = pytest.importorskip("torch")
jax = pytest.importorskip("jax")
import jax.numpy as jnp  # noqa: E402

SOURCE = """
import torch
from torch.distributions import Categorical, Normal

def stats(p, a, mu, s, x):
    c = Categorical(p)
    n = Normal(mu, s)
    return c.log_prob(a), c.entropy(), n.log_prob(x), n.entropy()

def draw(logits, n):
    c = Categorical(logits=logits)
    return torch.stack([c.sample() for _ in range(n)])
"""


@pytest.fixture(scope="module")
def converted():
    result = convert_source(textwrap.dedent(SOURCE), "dist.py")
    assert result.status in ("converted", "partial")
    namespace = {"rng_key": jax.random.PRNGKey(0)}
    exec(compile(result.output.decode(), "dist_jax.py", "exec"), namespace)
    original: dict = {}
    exec(compile(textwrap.dedent(SOURCE), "dist.py", "exec"), original)
    return namespace, original, result


def test_log_prob_and_entropy_match_torch(converted):
    ns, original, _ = converted
    rng = np.random.default_rng(0)
    p = rng.uniform(0.1, 1.0, (3, 4)).astype(np.float32)
    a = rng.integers(0, 4, (3,))
    mu = rng.normal(size=5).astype(np.float32)
    s = rng.uniform(0.5, 2.0, 5).astype(np.float32)
    x = rng.normal(size=5).astype(np.float32)
    ours = ns["stats"](jnp.asarray(p), jnp.asarray(a), jnp.asarray(mu), jnp.asarray(s), jnp.asarray(x))
    theirs = original["stats"](torch.tensor(p), torch.tensor(a), torch.tensor(mu), torch.tensor(s), torch.tensor(x))
    for o, t in zip(ours, theirs):
        np.testing.assert_allclose(np.asarray(o), t.numpy(), rtol=1e-5, atol=1e-6)


def test_samples_follow_the_distribution_and_differ_between_draws(converted):
    ns, _, result = converted
    logits = jnp.log(jnp.asarray([0.7, 0.2, 0.1]))
    draws = np.asarray(ns["draw"](logits, 2000))
    freq = np.bincount(draws, minlength=3) / len(draws)
    np.testing.assert_allclose(freq, [0.7, 0.2, 0.1], atol=0.04)
    assert "JP403" in {d.code for d in result.diagnostics}   # the script must thread rng_key
