"""A record's scores are a fixed function of the record: the same bits at any position in
any batch and with any number of threads (the kernels vigil asks for, models/runtime.py)."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from vigil.models.runtime import SCORING_ENV

# Untrained image networks: the property is the kernels', not the weights'.
SCORE_IMAGES = """
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
cfg = default_model_config("image", (28, 28, 1), ModelOptions(), 1000)
keras.utils.set_random_seed(0)
member = Member(networks.build_encoder(cfg), networks.build_decoder(cfg), networks.build_dae(cfg))
scorer = Scorer([member], cfg, precision=sys.argv[2])
x = np.random.default_rng(1).random((100, 28, 28, 1)).astype(np.float32)
order = np.random.default_rng(2).permutation(len(x))
whole, shuffled = scorer(x), scorer(x[order])
np.savez(sys.argv[3], order=order, **{"whole/" + k: v for k, v in whole.items()},
         **{"shuffled/" + k: v for k, v in shuffled.items()})
"""


def _image_scores(tmp_path, threads: int, precision: str) -> dict[str, np.ndarray]:
    out = tmp_path / f"{precision}-{threads}.npz"
    env = {"PATH": "/usr/bin:/bin", "TF_CPP_MIN_LOG_LEVEL": "3", **SCORING_ENV}
    res = subprocess.run([sys.executable, "-c", SCORE_IMAGES, str(threads), precision, str(out)],
                         capture_output=True, text=True, timeout=300, env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    return dict(np.load(out))


@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
def test_image_scores_do_not_depend_on_position_or_threads(tmp_path, precision):
    one, two = (_image_scores(tmp_path, t, precision) for t in (1, 2))
    order = one["order"]
    names = [k.split("/", 1)[1] for k in one if k.startswith("whole/")]
    assert "vae_log_px" in names and "dae_smooth_error" in names
    for name in names:
        # 100 records in blocks of 64: the shuffle moves records between blocks and positions.
        np.testing.assert_array_equal(one[f"whole/{name}"][order], one[f"shuffled/{name}"], err_msg=name)
        np.testing.assert_array_equal(one[f"whole/{name}"], two[f"whole/{name}"], err_msg=name)
