"""Training throughput: vigil's train steps against a plain ``keras.Model.fit`` of the same networks.

For each kind, with the kind's default networks (``vigil.models.defaults``) on its
benchmark data (images: the shared MNIST test set; tables: ADBench cardio from
``tests/fixtures``, repeated to ``--rows``):

  * vigil: examples/s of the VAE and of the DAE as ``vigil train`` fits them
    (``vigil.models.vae.VAE`` / ``vigil.models.dae.DAE``: custom ``train_step``, the
    KL warm-up and trimming callbacks, vigil's ``tf.data`` input and batch size);
  * plain: examples/s of ``keras.Model.fit`` on the same networks, composed as one model
    (x -> decoder(z_mean), or the DAE net) with a built-in loss, on in-memory arrays,
    the same batch size;

epochs after the first (which traces), rounds interleaved.  The ratio vigil / plain is
what vigil's training adds per example; the goal is >= 0.9.

    python tests/benchmarks/training.py [--kinds image,features] [--epochs 3] [--rounds 3]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import table, write_json  # noqa: E402

CARDIO = Path(__file__).resolve().parents[1] / "fixtures" / "adbench-6_cardio.npz"


def data(kind: str, rows: int):
    """(model inputs, ModelConfig) of the kind's benchmark data and default networks."""
    import numpy as np

    from vigil.models.defaults import ModelOptions, default_model_config
    from vigil.models.preprocessing import Preprocessing
    if kind == "image":
        from common import mnist_t10k
        raw = mnist_t10k()[0][..., None]
        x = Preprocessing.for_images(*raw.shape[1:]).transform(raw)
    else:
        loaded = np.load(CARDIO)
        raw = loaded["X"][loaded["y"] == 0].astype(np.float32)
        raw = raw[np.arange(rows) % len(raw)]
        x = Preprocessing.fit_features(raw, [f"f{j}" for j in range(raw.shape[1])]).transform(raw)
    return np.asarray(x, np.float32), default_model_config(kind, x.shape[1:], ModelOptions(), len(x))


class EpochTimes:
    """Seconds of each epoch of a fit, by a Keras callback."""

    def __init__(self):
        import tf_keras as keras
        times = self.times = []

        class Clock(keras.callbacks.Callback):
            def on_epoch_begin(self, epoch, logs=None):
                self.start = time.perf_counter()

            def on_epoch_end(self, epoch, logs=None):
                times.append(time.perf_counter() - self.start)
        self.callback = Clock()


def examples_per_s(fit, n: int) -> float:
    """Examples/s of a fit over the epochs after the first."""
    clock = EpochTimes()
    fit(clock.callback)
    return n * (len(clock.times) - 1) / sum(clock.times[1:])


def vigil_rates(x, config, batch: int, epochs: int) -> dict:
    import tf_keras as keras

    from vigil.models.dae import DAE, TrimAfter
    from vigil.models.training import STEPS_PER_EXECUTION, _dataset
    from vigil.models.vae import VAE, KLWarmup
    keras.utils.set_random_seed(0)
    out = {}
    for name, model, callback in (("vae", VAE(config), KLWarmup()),
                                  ("dae", DAE(config), TrimAfter(config.kl_warmup_epochs))):
        model.compile(optimizer=keras.optimizers.Adam(1e-3), steps_per_execution=STEPS_PER_EXECUTION)
        out[name] = examples_per_s(lambda clock, m=model, c=callback: m.fit(
            _dataset(x, batch, 0, True), epochs=epochs, callbacks=[c, clock], verbose=0), len(x))
    return out


def plain_rates(x, config, batch: int, epochs: int) -> dict:
    import tf_keras as keras

    from vigil.models.networks import build_dae, build_decoder, build_encoder
    keras.utils.set_random_seed(0)
    inputs = keras.Input(shape=config.input_shape)
    decoded = build_decoder(config)(build_encoder(config)(inputs)[0])
    mean = decoded if config.likelihood == "bernoulli" else decoded[0]
    flat = keras.layers.Flatten()(mean)
    vae = keras.Model(inputs, flat)
    loss = keras.losses.BinaryCrossentropy(from_logits=True) if config.likelihood == "bernoulli" \
        else keras.losses.MeanSquaredError()
    target = x.reshape(len(x), -1)
    out = {}
    for name, model, y, fn in (("vae", vae, target, loss), ("dae", build_dae(config), x, "mse")):
        model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=fn)
        out[name] = examples_per_s(lambda clock, m=model, t=y: m.fit(
            x, t, batch_size=batch, epochs=epochs, shuffle=True, callbacks=[clock], verbose=0), len(x))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kinds", default="image,features")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--rows", type=int, default=20_000, help="table rows (cardio's, repeated)")
    ap.add_argument("--tag", default="", help="suffix of the results file")
    args = ap.parse_args(argv)
    from vigil.models.runtime import apply_scoring_env
    apply_scoring_env(os.environ)       # as `vigil train` runs
    from vigil.models.config import TrainConfig
    from vigil.models.training import effective_batch_size
    result = {"epochs": args.epochs, "rounds": args.rounds, "kinds": {}}
    rows = []
    for kind in args.kinds.split(","):
        x, config = data(kind, args.rows)
        batch = effective_batch_size(len(x), TrainConfig().batch_size)
        runs = []
        for _ in range(args.rounds):
            runs.append({"vigil": vigil_rates(x, config, batch, args.epochs),
                         "plain": plain_rates(x, config, batch, args.epochs)})
        entry = {"rows": len(x), "batch_size": batch, "rounds": runs}
        for net in ("vae", "dae"):
            ours = statistics.median(r["vigil"][net] for r in runs)
            plain = statistics.median(r["plain"][net] for r in runs)
            ratio = statistics.median(r["vigil"][net] / r["plain"][net] for r in runs)
            entry[net] = {"vigil_examples_per_s": ours, "plain_examples_per_s": plain, "ratio": ratio}
            rows.append([kind, net.upper(), f"{ours:.0f}", f"{plain:.0f}", f"{ratio:.2f} (goal >= 0.9)"])
        result["kinds"][kind] = entry
    print(table(rows, ["kind", "network", "vigil examples/s", "plain fit examples/s", "vigil / plain"]))
    print("written to", write_json(f"training{args.tag}.json", result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
