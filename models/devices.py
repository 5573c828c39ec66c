"""Choosing the ``tf.distribute`` strategy and precision from the devices found."""
from __future__ import annotations

from dataclasses import dataclass

import tensorflow as tf
import tf_keras as keras

from vigil.models.config import ConfigError


@dataclass(frozen=True)
class DevicePlan:
    """Which ``tf.distribute`` strategy training uses, on which devices and at what precision, and why."""
    strategy: str             # "mirrored" | "one_device" | "default"
    devices: tuple[str, ...]
    precision: str            # "float32" | "mixed_float16" | "mixed_bfloat16"
    reason: str


def plan_devices(device: str, gpus: list[str], mixed_precision: bool) -> DevicePlan:
    """Pure decision: which strategy and precision for ``device`` given the GPUs present.

    * several GPUs -> MirroredStrategy over all of them;
    * one GPU      -> OneDeviceStrategy on it;
    * no GPU or ``device == "cpu"`` -> the default (CPU) strategy.
    Mixed precision is float16 on GPUs (tensor cores) and bfloat16 on CPUs.
    """
    if device not in ("auto", "cpu", "gpu"):
        raise ConfigError(f"device={device!r}; expected auto, cpu or gpu")
    if device == "gpu" and not gpus:
        raise RuntimeError("--device gpu was asked for but TensorFlow sees no GPU")
    use_gpu = bool(gpus) and device != "cpu"
    precision = "float32"
    if mixed_precision:
        precision = "mixed_float16" if use_gpu else "mixed_bfloat16"
    if use_gpu and len(gpus) > 1:
        return DevicePlan("mirrored", tuple(gpus), precision, f"{len(gpus)} GPUs found")
    if use_gpu:
        return DevicePlan("one_device", tuple(gpus), precision, "1 GPU found")
    why = "CPU asked for" if device == "cpu" else "no GPU found"
    return DevicePlan("default", ("/cpu:0",), precision, why)


def visible_gpus() -> list[str]:
    """The GPUs TensorFlow sees, as device names (none on a CPU-only machine)."""
    return [f"/gpu:{i}" for i, _ in enumerate(tf.config.list_physical_devices("GPU"))]


def make_strategy(plan: DevicePlan) -> tf.distribute.Strategy:
    """The ``tf.distribute.Strategy`` a plan names (Mirrored, OneDevice, or TF's default)."""
    if plan.strategy == "mirrored":
        return tf.distribute.MirroredStrategy(devices=list(plan.devices))
    if plan.strategy == "one_device":
        return tf.distribute.OneDeviceStrategy(plan.devices[0])
    return tf.distribute.get_strategy()


class precision_policy:
    """Context manager: build layers under ``plan.precision``, then restore the old policy.

    Keras reads the global policy when a layer is created, so it only has to be set while
    the models are built.
    """

    def __init__(self, precision: str):
        self.precision = precision

    def __enter__(self):
        self.saved = keras.mixed_precision.global_policy()
        keras.mixed_precision.set_global_policy(self.precision)

    def __exit__(self, *exc):
        keras.mixed_precision.set_global_policy(self.saved)


# CPU flags (Linux's /proc/cpuinfo names) of instructions that do bfloat16 arithmetic.
BFLOAT16_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_has_bfloat16(cpuinfo: str | None = None) -> bool | None:
    """Whether this CPU has bfloat16 instructions (``BFLOAT16_FLAGS``); None when unknown.

    Without them TensorFlow runs bfloat16 convolutions through slow fallbacks, so
    ``--precision bfloat16`` would score slower than float32.
    """
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
                cpuinfo = f.read()
        except OSError:
            return None
    flags = {flag for line in cpuinfo.splitlines() if line.startswith("flags")
             for flag in line.split(":", 1)[-1].split()}
    if not flags:
        return None
    return any(flag in flags for flag in BFLOAT16_FLAGS)

