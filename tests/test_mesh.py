"""A batch sharded over 8 virtual CPU devices gives the same result as one device."""

import os
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent("""
    import jax, jax.numpy as jnp, numpy as np
    from ddjax.mesh import make_mesh, shard_leading, replicate
    from ddjax.models import build_model, init_params

    assert jax.device_count() == 8, jax.devices()
    model = build_model("convnet", num_outputs=4, width=8, image_size=(16, 16))
    params = init_params(model, jax.random.key(0), (16, 16))["params"]
    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 16, 16, 3)).astype(np.float32)
    y = rng.normal(size=(16, 4)).astype(np.float32)

    @jax.jit
    def grads(params, x, y):
        loss = lambda p: jnp.mean((model.apply({"params": p}, x) - y) ** 2)
        return jax.grad(loss)(params)

    one = grads(params, jax.device_put(x, jax.devices()[0]), jax.device_put(y, jax.devices()[0]))
    mesh = make_mesh()
    xs, ys = shard_leading((x, y), mesh)
    assert len(xs.sharding.device_set) == 8
    many = grads(replicate(params, mesh), xs, ys)
    for a, b in zip(jax.tree.leaves(one), jax.tree.leaves(many)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-5, atol=1e-6)
    print("ok")
""")


def test_sharded_gradient_equals_single_device():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    result = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().endswith("ok")
