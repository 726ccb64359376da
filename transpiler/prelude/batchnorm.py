"""torch's BatchNorm statistics in a flax BatchNorm."""
import math

import jax
import jax.numpy as jnp
import flax.linen as nn


class TorchBatchNorm(nn.BatchNorm):
    """torch.nn.BatchNorm1d/2d/3d and SyncBatchNorm as flax's ``nn.BatchNorm``: same fields
    (``momentum`` is flax's, 1 - torch's), same variables (``params/scale|bias``,
    ``batch_stats/mean|var``). In training it normalises with the biased batch variance and,
    as torch does, updates ``var`` with the unbiased one (x n/(n-1), n the elements per
    feature over every device of ``axis_name``); flax's BatchNorm stores the biased one.
    The variance is two-pass unless ``use_fast_variance``; statistics are at least float32
    with ``force_float32_reductions``."""
    use_fast_variance: bool = False

    @nn.compact
    def __call__(self, x, use_running_average=None):
        use_running_average = nn.merge_param("use_running_average", self.use_running_average,
                                             use_running_average)
        features = {a % x.ndim for a in (self.axis if isinstance(self.axis, tuple) else (self.axis,))}
        axes = tuple(i for i in range(x.ndim) if i not in features)
        shape = tuple(1 if i in axes else d for i, d in enumerate(x.shape))    # broadcasts on x
        feature_shape = tuple(x.shape[i] for i in sorted(features))
        stats_dtype = jnp.float32 if self.force_float32_reductions else self.param_dtype
        ra_mean = self.variable("batch_stats", "mean", jnp.zeros, feature_shape, stats_dtype)
        ra_var = self.variable("batch_stats", "var", jnp.ones, feature_shape, stats_dtype)
        if use_running_average:
            mean, var = ra_mean.value, ra_var.value
        else:
            xs = x.astype(jnp.promote_types(self.dtype or x.dtype, stats_dtype))
            axis_name = None if self.is_initializing() else self.axis_name

            def over_devices(reduce, v):
                if axis_name is None:
                    return v
                return reduce(v, axis_name, axis_index_groups=self.axis_index_groups)

            mean = over_devices(jax.lax.pmean, xs.mean(axes))
            if self.use_fast_variance:
                var = jnp.maximum(over_devices(jax.lax.pmean, (xs * xs).mean(axes)) - mean * mean, 0)
            else:
                var = over_devices(jax.lax.pmean, jnp.square(xs - mean.reshape(shape)).mean(axes))
            if not self.is_initializing():
                n = over_devices(jax.lax.psum, jnp.asarray(math.prod(x.shape[i] for i in axes), xs.dtype))
                m = self.momentum
                ra_mean.value = m * ra_mean.value + (1 - m) * mean
                ra_var.value = m * ra_var.value + (1 - m) * var * n / (n - 1)
        mul = jax.lax.rsqrt(var.reshape(shape) + self.epsilon)
        args = [x]
        if self.use_scale:
            scale = self.param("scale", self.scale_init, feature_shape, self.param_dtype)
            mul = mul * scale.reshape(shape)
            args.append(scale)
        y = (x - mean.reshape(shape)) * mul
        if self.use_bias:
            bias = self.param("bias", self.bias_init, feature_shape, self.param_dtype)
            y = y + bias.reshape(shape)
            args.append(bias)
        return y.astype(self.dtype or jnp.result_type(*args))
