"""TorchBatchNorm (transpiler/prelude/batchnorm.py) keeps torch's BatchNorm statistics: the
running variance gets the unbiased batch variance, so eval outputs after training match."""
import jax
import jax.numpy as jnp
import flax.linen as fnn
import numpy as np
import pytest
import torch

from transpiler.prelude.batchnorm import TorchBatchNorm

TOL = dict(rtol=1e-5, atol=1e-6)


def _train_and_compare(tlayer, flayer, shape, steps=4, seed=0):
    rng = np.random.default_rng(seed)
    draw = lambda: (rng.normal(size=shape) * rng.uniform(0.5, 3, size=(1, shape[1]) + (1,) * (len(shape) - 2))
                    + rng.normal(size=(1, shape[1]) + (1,) * (len(shape) - 2))).astype(np.float32)
    x = draw()
    variables = flayer.init(jax.random.PRNGKey(0), jnp.asarray(x), use_running_average=False)
    params = {}
    if tlayer.affine:   # non-trivial affine parameters on both sides
        with torch.no_grad():
            tlayer.weight.uniform_(0.5, 1.5)
            tlayer.bias.uniform_(-1, 1)
        params = {"params": {"scale": jnp.asarray(tlayer.weight.detach().numpy()),
                             "bias": jnp.asarray(tlayer.bias.detach().numpy())}}
    stats = variables["batch_stats"]
    train = jax.jit(lambda s, x: flayer.apply({**params, "batch_stats": s}, x, use_running_average=False,
                                              mutable=["batch_stats"]))
    worst = 0.0
    tlayer.train()
    for step in range(steps):
        x = draw() if step else x
        y, updates = train(stats, jnp.asarray(x))
        stats = updates["batch_stats"]
        ty = tlayer(torch.from_numpy(x)).detach().numpy()
        for got, want, what in ((y, ty, "train output"), (stats["mean"], tlayer.running_mean.numpy(), "running_mean"),
                                (stats["var"], tlayer.running_var.numpy(), "running_var")):
            np.testing.assert_allclose(np.asarray(got), want, err_msg=f"step {step}: {what}", **TOL)
            worst = max(worst, float(np.abs(np.asarray(got) - want).max()))
    tlayer.eval()
    x = draw()
    y = flayer.apply({**params, "batch_stats": stats}, jnp.asarray(x), use_running_average=True)
    np.testing.assert_allclose(np.asarray(y), tlayer(torch.from_numpy(x)).detach().numpy(), err_msg="eval", **TOL)
    return max(worst, float(np.abs(np.asarray(y) - tlayer(torch.from_numpy(x)).detach().numpy()).max()))


@pytest.mark.parametrize("cls, shape, momentum, affine", [
    (torch.nn.BatchNorm1d, (6, 4), 0.1, True),
    (torch.nn.BatchNorm1d, (5, 3, 7), 0.3, False),
    (torch.nn.BatchNorm2d, (3, 4, 5, 2), 0.1, True),
    (torch.nn.BatchNorm2d, (2, 3, 2, 3), 0.9, False),
    (torch.nn.BatchNorm3d, (2, 2, 3, 2, 2), 0.05, True),
])
def test_matches_torch_batchnorm(cls, shape, momentum, affine):
    tlayer = cls(shape[1], momentum=momentum, affine=affine, eps=1e-3)
    flayer = TorchBatchNorm(axis=1, momentum=1 - momentum, epsilon=1e-3, use_scale=affine, use_bias=affine)
    worst = _train_and_compare(tlayer, flayer, shape)
    assert worst < 1e-5


def test_plain_flax_batchnorm_differs_where_torchbatchnorm_does_not():
    """The difference this layer removes is real: flax's running var is the biased one."""
    tlayer = torch.nn.BatchNorm1d(3)
    x = np.random.default_rng(1).normal(size=(4, 3)).astype(np.float32)
    tlayer.train()(torch.from_numpy(x))
    plain = fnn.BatchNorm(axis=1, momentum=0.9, use_fast_variance=False)
    for layer, expect_close in ((TorchBatchNorm(axis=1, momentum=0.9), True), (plain, False)):
        v = layer.init(jax.random.PRNGKey(0), jnp.asarray(x), use_running_average=False)
        _, upd = layer.apply(v, jnp.asarray(x), use_running_average=False, mutable=["batch_stats"])
        assert np.allclose(np.asarray(upd["batch_stats"]["var"]), tlayer.running_var.numpy(), **TOL) == expect_close


def test_fields_and_variables_are_flax_batchnorms():
    """Same fields and variable tree as nn.BatchNorm (weight transfer is unchanged)."""
    x = jnp.ones((4, 3, 2))
    ours = TorchBatchNorm(axis=1, momentum=0.9, epsilon=1e-5).init(jax.random.PRNGKey(0), x, use_running_average=True)
    flax = fnn.BatchNorm(axis=1).init(jax.random.PRNGKey(0), x, use_running_average=True)
    assert jax.tree_util.tree_map(jnp.shape, ours) == jax.tree_util.tree_map(jnp.shape, flax)
    assert isinstance(TorchBatchNorm(), fnn.BatchNorm)
    # the call-site convention: use_running_average on the call, or as a field
    y = TorchBatchNorm(axis=1, use_running_average=True).apply(ours, x)
    assert y.shape == x.shape


def test_axis_name_global_statistics_and_count():
    """With axis_name (SyncBatchNorm under pmap) the statistics and n are over every device:
    4 simulated shards under vmap give torch's update on the whole batch."""
    rng = np.random.default_rng(2)
    x = rng.normal(size=(8, 3, 2)).astype(np.float32) * 2 + 1
    tlayer = torch.nn.BatchNorm1d(3, momentum=0.2).train()
    ty = tlayer(torch.from_numpy(x)).detach().numpy()
    layer = TorchBatchNorm(axis=1, momentum=0.8, axis_name="batch")
    v = layer.init(jax.random.PRNGKey(0), jnp.asarray(x[:2]), use_running_average=False)
    shards = jnp.asarray(x.reshape(4, 2, 3, 2))
    y, upd = jax.vmap(lambda s: layer.apply(v, s, use_running_average=False, mutable=["batch_stats"]),
                      axis_name="batch")(shards)
    np.testing.assert_allclose(np.asarray(y).reshape(x.shape), ty, **TOL)
    for k, want in (("mean", tlayer.running_mean), ("var", tlayer.running_var)):
        got = np.asarray(upd["batch_stats"][k])
        np.testing.assert_allclose(got, np.broadcast_to(want.numpy(), got.shape), err_msg=k, **TOL)


class _TorchNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.bn = torch.nn.BatchNorm1d(3, momentum=0.3)

    def forward(self, x):
        return self.bn(x * 2.0)


def _flax_net(layer):
    class Net(fnn.Module):
        def setup(self):
            self.bn = layer(axis=1, momentum=0.7, epsilon=1e-5)

        def __call__(self, x, train: bool = False):
            return self.bn(x * 2.0, use_running_average=not train)
    return Net


def _transfer(torch_module, variables):
    bn = torch_module.bn
    return {"params": {"bn": {"scale": jnp.asarray(bn.weight.detach().numpy()),
                              "bias": jnp.asarray(bn.bias.detach().numpy())}},
            "batch_stats": {"bn": {"mean": jnp.asarray(bn.running_mean.numpy()),
                                   "var": jnp.asarray(bn.running_var.numpy())}}}


class _BiasedBatchNorm(fnn.BatchNorm):
    """flax's BatchNorm under another name: its biased running var must fail the check."""


def test_validator_judges_the_running_variance_as_torch_stores_it():
    """The harness's training-mode check expects torch's running_var for TorchBatchNorm (no
    caveat) and fails a layer that stores the biased one; a plain flax nn.BatchNorm (files of
    older jaxport versions) is still judged against the biased update, with a note."""
    from transpiler.validate.harness import compare_module
    spec = {"inputs": ["float32[B, 3]"], "dims": {"B": [4, 6]}, "train_forward": True}
    ok = compare_module(_TorchNet, _flax_net(TorchBatchNorm), spec, transfer=_transfer)
    assert ok.status == "pass", str(ok)
    assert any(c.name.startswith("train_stats:batch_stats/bn/var") for c in ok.checks)
    assert "unbiased" not in str(ok)
    bad = compare_module(_TorchNet, _flax_net(_BiasedBatchNorm), spec, transfer=_transfer)
    assert bad.status == "fail" and all("batch_stats/bn/var" in c.name for c in bad.failures), str(bad)
    old = compare_module(_TorchNet, _flax_net(fnn.BatchNorm), spec, transfer=_transfer)
    assert old.status == "pass" and "unbiased" in str(old), str(old)
