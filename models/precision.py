"""A trained network re-expressed as plain TensorFlow ops in a lower compute precision.

``Scorer(precision="bfloat16")`` runs the VAE's decoder, which does nine tenths of an
image's scoring work (16 posterior samples per record), through ``lowered``: the same
function of the same weights, computed in bfloat16 with float32 outputs.  Two rewrites
make bfloat16 pay on CPUs with AMX (oneDNN's kernels) instead of merely casting:

* a stride-2, 3x3, "same" transposed convolution is a stride-1 2x2 convolution producing
  the 2x2 sub-pixels of each input pixel as channels (``subpixel_kernel``): one dense
  convolution with the bias and ReLU fused, instead of a scatter over a mostly-zero grid;
* the result stays in that sub-pixel layout into the output head, whose 3x3 convolution
  is rewritten for it (``subpixel_head_kernel``), so the largest activation of the
  network is never shuffled back to pixels; only the head's few channels are.

Layers are read in the model's own order, so a decoder of ``vigil.models.networks``
with any depth, crop or head count is supported; any other layer is refused by name.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import tensorflow as tf
import tf_keras as keras
from tf_keras import layers

# Per spatial axis, for output sub-pixel a (0: even, 1: odd output row): which tap of a
# 2-tap window over input rows (i-1, i) takes which row of the 3-tap transposed kernel.
# A stride-2 "same" transposed conv of kernel w sends input row i to output rows 2i + t
# for t = 0, 1, 2, so output 2i gets w[0] from row i and w[2] from row i-1; 2i+1 gets w[1].
_TRANSPOSED_TAPS = {0: {0: 2, 1: 0}, 1: {1: 1}}


def subpixel_kernel(kernel: np.ndarray) -> np.ndarray:
    """A (3, 3, out, in) stride-2 transposed-conv kernel -> its (2, 2, in, 4 * out) sub-pixel
    form, for a "valid" conv over the input padded by one row and column at the top left.
    Output channel (2a + b) * out + c is channel c of output pixel (2i + a, 2j + b)."""
    _, _, n_out, n_in = kernel.shape
    k = np.zeros((2, 2, n_in, 2, 2, n_out), np.float32)
    for a, row_taps in _TRANSPOSED_TAPS.items():
        for b, col_taps in _TRANSPOSED_TAPS.items():
            for ti, wi in row_taps.items():
                for tj, wj in col_taps.items():
                    k[ti, tj, :, a, b, :] = kernel[wi, wj].T
    return k.reshape(2, 2, n_in, 4 * n_out)


def subpixel_head_kernel(kernel: np.ndarray) -> np.ndarray:
    """A (3, 3, in, out) stride-1 "same" conv kernel -> the (3, 3, 4 * in, 4 * out) kernel of
    the same conv applied to a map held as 2x2 sub-pixels (channels ordered as above).
    Fine pixel 2i + a + d (d = -1, 0, 1) is coarse pixel i + (a + d) // 2, sub-pixel (a + d) % 2."""
    _, _, n_in, n_out = kernel.shape
    k = np.zeros((3, 3, 2, 2, n_in, 2, 2, n_out), np.float32)
    for a in (0, 1):
        for b in (0, 1):
            for di in (-1, 0, 1):
                for dj in (-1, 0, 1):
                    oi, si = divmod(a + di, 2)
                    oj, sj = divmod(b + dj, 2)
                    k[oi + 1, oj + 1, si, sj, :, a, b, :] = kernel[di + 1, dj + 1]
    return k.reshape(3, 3, 4 * n_in, 4 * n_out)


class _Value:
    """A tensor on its way through the network; ``subpixel`` when held as 2x2 sub-pixels."""

    def __init__(self, tensor: tf.Tensor, subpixel: bool = False):
        self.tensor, self.subpixel = tensor, subpixel

    def pixels(self) -> tf.Tensor:
        return tf.nn.depth_to_space(self.tensor, 2) if self.subpixel else self.tensor


def _is_subpixel_transpose(layer: layers.Layer) -> bool:
    return (isinstance(layer, layers.Conv2DTranspose) and tuple(layer.strides) == (2, 2)
            and tuple(layer.kernel_size) == (3, 3) and layer.padding == "same"
            and layer.output_padding is None and tuple(layer.dilation_rate) == (1, 1))


def _op(layer: layers.Layer, dtype: tf.DType) -> Callable[[_Value], _Value]:
    """One layer as a function of a ``_Value``, its weights cast to ``dtype`` once."""
    weights = [tf.constant(w, dtype) for w in layer.get_weights()]
    act = getattr(layer, "activation", None)
    if isinstance(layer, layers.Dense):
        kernel, bias = weights
        return lambda v: _Value(act(tf.matmul(v.pixels(), kernel) + bias))
    if isinstance(layer, layers.Reshape):
        return lambda v: _Value(tf.reshape(v.pixels(), [-1, *layer.target_shape]))
    if isinstance(layer, layers.Flatten):
        return lambda v: _Value(tf.reshape(v.pixels(), [tf.shape(v.tensor)[0], -1]))
    if isinstance(layer, layers.Cropping2D):
        (top, bottom), (left, right) = layer.cropping

        def crop(v: _Value) -> _Value:
            x = v.pixels()
            return _Value(x[:, top:tf.shape(x)[1] - bottom, left:tf.shape(x)[2] - right])
        return crop
    if _is_subpixel_transpose(layer):
        kernel = tf.constant(subpixel_kernel(layer.get_weights()[0]), dtype)
        bias = tf.tile(weights[1], [4])
        pad = [[0, 0], [1, 0], [1, 0], [0, 0]]
        return lambda v: _Value(act(tf.nn.bias_add(
            tf.nn.conv2d(tf.pad(v.pixels(), pad), kernel, 1, "VALID"), bias)), subpixel=True)
    if (isinstance(layer, layers.Conv2D) and not isinstance(layer, layers.Conv2DTranspose)
            and layer.padding == "same" and tuple(layer.dilation_rate) == (1, 1)):
        kernel, bias = weights
        strides = tuple(layer.strides)
        # A 3x3 stride-1 conv (the output head) can read a sub-pixel map as it is.
        head = (tf.constant(subpixel_head_kernel(layer.get_weights()[0]), dtype), tf.tile(bias, [4])) \
            if strides == (1, 1) and tuple(layer.kernel_size) == (3, 3) else None

        def conv(v: _Value) -> _Value:
            if v.subpixel and head is not None:
                out = tf.nn.bias_add(tf.nn.conv2d(v.tensor, head[0], 1, "SAME"), head[1])
                return _Value(act(tf.nn.depth_to_space(out, 2)))
            return _Value(act(tf.nn.bias_add(tf.nn.conv2d(v.pixels(), kernel, strides, "SAME"), bias)))
        return conv
    raise ValueError(f"{layer.name}: a {type(layer).__name__} layer cannot be scored in "
                     f"{dtype.name} (supported: Dense, Reshape, Flatten, Cropping2D, Conv2D "
                     "with 'same' padding, 3x3 stride-2 'same' Conv2DTranspose)")


def lowered(model: keras.Model, dtype: tf.DType) -> Callable[[tf.Tensor], tf.Tensor | list[tf.Tensor]]:
    """``model``'s function computed in ``dtype``, returning float32 outputs like the model's.

    For a single-input functional model of the layers ``_op`` supports (each with one
    input); raises ``ValueError`` naming the first layer it cannot express.
    """
    ops: list[tuple[str, str, Callable[[_Value], _Value]]] = []
    for layer in model.layers:
        if isinstance(layer, layers.InputLayer):
            continue
        parents = tf.nest.flatten(layer.inbound_nodes[0].inbound_layers)
        if len(parents) != 1:
            raise ValueError(f"{layer.name}: a layer with {len(parents)} inputs cannot be lowered")
        parent = parents[0]
        ops.append((layer.name, parent.name, _op(layer, dtype)))
    input_name = model.layers[0].name
    outputs = list(model.output_names)

    def run(x: tf.Tensor) -> tf.Tensor | list[tf.Tensor]:
        values = {input_name: _Value(tf.cast(x, dtype))}
        for name, parent, op in ops:
            values[name] = op(values[parent])
        result = [tf.cast(values[n].pixels(), tf.float32) for n in outputs]
        return result[0] if len(result) == 1 else result
    return run
