"""Class activation maps (Grad-CAM, Selvaraju et al. 2017): where the model looks.

    heatmap = keras_effnet.cam(model, "cat.jpg")          # [H, W] in [0, 1]
    keras_effnet.save_cam("cam.png", image, heatmap, title="tiger_cat 0.39")

Grad-CAM weighs the last convolutional activation (`top_activation` in every
EfficientNet here and in keras.applications) by the gradient of the class
score, averaged over space. The EfficientNet may be nested in a user's own
model (a fine-tuned head on top, a Sequential wrapper): the activation is
found at any depth. Gradients are taken through `stateless_call`, so the same
code runs on the TensorFlow, JAX and PyTorch backends.
"""

from __future__ import annotations

import io
import os

import keras
import numpy as np

from keras_effnet import graph

__all__ = ["cam", "overlay", "save_cam"]

DEFAULT_LAYER = "top_activation"  # keras.applications' and our last conv activation


def cam(model, image, class_index: int | None = None, layer_name: str | None = None,
        return_info: bool = False):
    """Grad-CAM heatmap of `image` for `class_index` (default: the top class).

    `image` is a path or an HxWx3 array of 0-255 values; one not at the model's
    input size is centre-cropped and resized like `load_image`. Returns an
    [H, W] float32 array in [0, 1] at the model's input resolution. With
    `return_info=True`: (heatmap, info) where info holds "class_index", "score"
    (the model's output for it), "layer" and "image" (the model-size image the
    heatmap covers). A final softmax Dense is differentiated before its softmax,
    so a confident prediction does not flatten the gradients.
    """
    from keras_effnet.preprocessing import load_image

    height, width = _input_size(model)
    if isinstance(image, (str, os.PathLike)) or np.shape(image)[:2] != (height, width):
        if height != width:
            raise ValueError(f"the model takes {height}x{width} images: give an image of "
                             "exactly that size (only square inputs are cropped for you)")
        image = load_image(image, height)
    image = np.asarray(image, dtype="float32")
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"cam expects one HxWx3 image, got an array of shape {image.shape}")
    name = layer_name or _default_layer(model)
    head = _final_layer(model)
    if not (isinstance(head, keras.layers.Dense)
            and head.activation is keras.activations.softmax):
        head = None
    probe = _Probe(name=f"{name}_cam_probe")
    probed, keys = _rewire(model, name, probe, head)
    if "activation" not in keys:
        raise ValueError(f"layer {name!r} is not on the path from the model's input to its "
                         "output; pass layer_name= a layer whose output feeds the prediction")
    batch = keras.ops.convert_to_tensor(image[None])
    trainable, frozen = probed.trainable_variables, probed.non_trainable_variables

    def forward(delta):
        values = probed.stateless_call(
            [delta if v is probe.delta else v.value for v in trainable],
            [delta if v is probe.delta else v.value for v in frozen], batch, training=False)[0]
        found = dict(zip(keys, values[len(values) - len(keys):]))
        scores = values[0]
        if head is not None:  # the logits under the softmax
            scores = keras.ops.matmul(found["head_input"], head.kernel.value) + head.bias.value
        return scores, found["activation"]

    scores = keras.ops.convert_to_numpy(forward(probe.delta.value)[0])[0]
    index = int(np.argmax(scores)) if class_index is None else int(class_index)
    if not 0 <= index < scores.shape[-1]:
        raise ValueError(f"class_index {index} is outside the model's {scores.shape[-1]} "
                         "outputs")

    def class_score(delta):
        scores, activation = forward(delta)
        return scores[0, index], activation

    grads, activation = _gradient(class_score, probe.delta.value)
    grads = keras.ops.convert_to_numpy(grads)
    activation = keras.ops.convert_to_numpy(activation)[0]
    weights = grads / (activation.shape[0] * activation.shape[1])  # spatial mean per channel
    heat = _resize(np.maximum(activation @ weights, 0.0), (height, width))
    peak = float(heat.max())
    heat = (heat / peak if peak > 0 else heat).astype("float32")
    if not return_info:
        return heat
    output = keras.ops.convert_to_numpy(model(batch, training=False))
    output = np.asarray(output[0] if isinstance(output, (list, tuple)) else output)
    return heat, {"class_index": index, "score": float(output[0, index]), "layer": name,
                  "image": np.clip(image, 0, 255).astype("uint8")}


def overlay(image, heatmap, alpha: float = 0.45, colormap: str = "jet") -> np.ndarray:
    """`image` (HxWx3, 0-255) with `heatmap` ([H, W] in [0, 1]) blended on top."""
    from matplotlib import colormaps

    image = np.asarray(image, dtype="float32")
    if image.shape[:2] != heatmap.shape:
        raise ValueError(f"heatmap {heatmap.shape} and image {image.shape[:2]} differ in size")
    colours = colormaps[colormap](np.clip(heatmap, 0, 1))[..., :3] * 255.0
    return np.clip((1 - alpha) * image + alpha * colours, 0, 255).astype("uint8")


def save_cam(path: str | os.PathLike, image, heatmap, title: str = "",
             overwrite: bool = True) -> str:
    """Write the photo with the heatmap overlaid (PNG) and `title` above it; the
    file appears complete or not at all."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    from keras_effnet.files import write_bytes

    figure, axis = plt.subplots(figsize=(5, 5.4), dpi=100)
    axis.imshow(overlay(image, heatmap))
    axis.set_title(title)
    axis.axis("off")
    figure.tight_layout()
    png = io.BytesIO()
    figure.savefig(png, format="png")
    plt.close(figure)
    write_bytes(path, png.getvalue(), overwrite)
    return str(path)


def _input_size(model) -> tuple[int, int]:
    shape = model.inputs[0].shape
    if len(shape) != 4 or shape[1] is None or shape[2] is None:
        raise ValueError(f"cam needs a model with a fixed image input [N, H, W, 3], got {shape}; "
                         "build it with input_shape=(H, W, 3)")
    return int(shape[1]), int(shape[2])


def _default_layer(model) -> str:
    names = [layer.name for layer in graph.layers(model)]
    if DEFAULT_LAYER in names:
        return DEFAULT_LAYER
    spatial = [layer.name for layer in graph.layers(model, nested="leaves")
               if _output_rank(layer) == 4]
    if not spatial:
        raise ValueError("found no layer with a spatial [N, H, W, C] output to explain; "
                         "pass layer_name=")
    return spatial[-1]


def _output_rank(layer) -> int:
    try:
        return len(layer.output.shape)
    except (AttributeError, ValueError):  # never called, or called more than once
        return 0


def _final_layer(model):
    layer = model.layers[-1]
    while hasattr(layer, "layers") and layer.layers:
        layer = layer.layers[-1]
    return layer


def _rewire(model, target: str, probe, head):
    """`model` rebuilt from its own layers with `probe` after layer `target`.
    Returns (new_model, keys): new_model's outputs are model's outputs followed
    by the tensors named in `keys` ("activation": the probed target output;
    "head_input": the input of the softmax `head`), found at any nesting depth."""
    found = {}
    rewired = {}

    def clone(layer):
        if hasattr(layer, "layers") and (graph.contains(layer, target) or (
                head is not None and graph.contains(layer, head.name))):
            rewired[id(layer)] = _rewire(layer, target, probe, head)
            return rewired[id(layer)][0]
        return layer

    def call(layer, *args, **kwargs):
        if layer is head:
            found["head_input"] = args[0]
        inner = next((keys for new, keys in rewired.values() if new is layer), None)
        if inner is not None:
            values = layer(*args, **kwargs)
            found.update(zip(inner, values[len(values) - len(inner):]))
            outputs = values[:len(values) - len(inner)]
            return outputs[0] if len(outputs) == 1 else outputs
        out = layer(*args, **kwargs)
        if layer.name == target:
            out = probe(out)
            found["activation"] = out
        return out

    new = graph.rebuild(model, call=call, replace=clone)
    inputs, outputs = new.inputs, list(new.outputs)
    keys = [key for key in ("activation", "head_input") if key in found]
    return keras.Model(inputs, outputs + [found[key] for key in keys]), keys


def _gradient(fn, value):
    """d fn(value)[0] / d value on the active backend; returns (gradient, aux)."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        value = tf.convert_to_tensor(value)
        with tf.GradientTape() as tape:
            tape.watch(value)
            score, aux = fn(value)
        return tape.gradient(score, value), aux
    if backend == "jax":
        import jax

        return jax.grad(fn, has_aux=True)(value)
    if backend == "torch":
        import torch

        value = value.detach().clone().requires_grad_(True)
        score, aux = fn(value)
        (grad,) = torch.autograd.grad(score, value)
        return grad, aux.detach()
    raise ValueError(f"cam supports the tensorflow, jax and torch backends, not {backend!r}")


def _resize(heat: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    from PIL import Image

    picture = Image.fromarray(heat.astype("float32"), mode="F")
    return np.asarray(picture.resize((size[1], size[0]), Image.BILINEAR), dtype="float32")


class _Probe(keras.layers.Layer):
    """Adds a zero per-channel variable to its input. The gradient with respect
    to it is the gradient with respect to the activation summed over space,
    which is all Grad-CAM needs (its channel weights are spatial means), and it
    has a fixed shape even where the nested model's spatial size is None."""

    def build(self, input_shape):
        self.delta = self.add_weight(shape=(input_shape[-1],), initializer="zeros",
                                     trainable=False, name="delta")

    def call(self, inputs):
        return inputs + keras.ops.cast(self.delta, inputs.dtype)
