"""A record's scores are a fixed function of the record: the same bits at any position in
any batch and with any number of threads (the kernels vigil asks for, models/runtime.py)."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from vigil.models.runtime import SCORING_ENV

# Untrained networks of both kinds: the property is the kernels', not the weights'.
SCORE = """
import sys
import numpy as np
import tensorflow as tf
import tf_keras as keras
threads = int(sys.argv[1])
tf.config.threading.set_intra_op_parallelism_threads(threads)
tf.config.threading.set_inter_op_parallelism_threads(threads)
from vigil.models import networks
from vigil.models.defaults import ModelOptions, default_model_config
from vigil.models.scoring import Member, Scorer
out = {}
for kind, shape, n in (("image", (28, 28, 1), 100), ("features", (21,), 600)):
    cfg = default_model_config(kind, shape, ModelOptions(), 1000)
    keras.utils.set_random_seed(0)
    members = [Member(networks.build_encoder(cfg), networks.build_decoder(cfg), networks.build_dae(cfg))
               for _ in range(cfg.members)]
    scorer = Scorer(members, cfg, precision=sys.argv[2])
    x = np.random.default_rng(1).random((n, *shape)).astype(np.float32)
    order = np.random.default_rng(2).permutation(n)
    whole, shuffled = scorer(x), scorer(x[order])
    out[f"{kind}/order"] = order
    out.update({f"{kind}/whole/{k}": v for k, v in whole.items()})
    out.update({f"{kind}/shuffled/{k}": v for k, v in shuffled.items()})
np.savez(sys.argv[3], **out)
"""


def _scores(tmp_path, threads: int, precision: str) -> dict[str, np.ndarray]:
    out = tmp_path / f"{precision}-{threads}.npz"
    env = {"PATH": "/usr/bin:/bin", "TF_CPP_MIN_LOG_LEVEL": "3", **SCORING_ENV}
    res = subprocess.run([sys.executable, "-c", SCORE, str(threads), precision, str(out)],
                         capture_output=True, text=True, timeout=300, env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    return dict(np.load(out))


@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
def test_scores_do_not_depend_on_position_or_threads(tmp_path, precision):
    one, two = (_scores(tmp_path, t, precision) for t in (1, 2))
    for kind, block in (("image", 64), ("features", 256)):
        order = one[f"{kind}/order"]
        names = [k.rsplit("/", 1)[1] for k in one if k.startswith(f"{kind}/whole/")]
        assert "vae_log_px" in names and "top_index" in names
        # More records than a block: the shuffle moves records between blocks and positions.
        assert len(order) > block
        for name in names:
            whole = one[f"{kind}/whole/{name}"]
            np.testing.assert_array_equal(whole[order], one[f"{kind}/shuffled/{name}"], err_msg=name)
            np.testing.assert_array_equal(whole, two[f"{kind}/whole/{name}"], err_msg=name)
