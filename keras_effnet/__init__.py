"""keras_effnet: the EfficientNet family for Keras 3, from a notebook to a phone.

    import keras_effnet
    model = keras_effnet.EfficientNetLite0(weights="imagenet")
    keras_effnet.decode_predictions(model.predict(images))

Named variants (B0-B7, Lite0-4, EdgeTPU-S/M/L) equal the published models;
`EfficientNet(phi=...)` builds any compound coefficient.
"""

# the keras-effnet command keeps TensorFlow's native start-up lines off its output; that
# has to begin before the imports below load TensorFlow (keras_effnet.console)
from keras_effnet import console as _console

_console.quiet_for_command()
with _console.quiet():  # TensorFlow's native start-up lines, and its first look for a GPU
    import keras as _keras

    if _keras.backend.backend() == "tensorflow":
        import tensorflow as _tf

        _tf.config.list_physical_devices()  # not logical: that would fix the device setup

from keras_effnet.features import FeatureLevel, feature_info, feature_model
from keras_effnet.gradcam import cam, overlay, save_cam
from keras_effnet.layers import Normalization
from keras_effnet.preprocessing import (
    ImageReadError,
    decode_predictions,
    imagenet_classes,
    load_image,
    preprocess_input,
    read_image,
)
from keras_effnet.profiling import ModelProfile, profile
from keras_effnet.scaling import compound_coefficients, flops_multiplier, plan_blocks
from keras_effnet.specs import VARIANTS, StageSpec, VariantSpec, get_variant, variant_names
from keras_effnet.variants import (
    EfficientNet,
    EfficientNetB0,
    EfficientNetB1,
    EfficientNetB2,
    EfficientNetB3,
    EfficientNetB4,
    EfficientNetB5,
    EfficientNetB6,
    EfficientNetB7,
    EfficientNetB8,
    EfficientNetEdgeTPUL,
    EfficientNetEdgeTPUM,
    EfficientNetEdgeTPUS,
    EfficientNetL2,
    EfficientNetLite0,
    EfficientNetLite1,
    EfficientNetLite2,
    EfficientNetLite3,
    EfficientNetLite4,
)

__version__ = "0.1.0"

__all__ = [
    "VARIANTS",
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
    "FeatureLevel",
    "ImageReadError",
    "ModelProfile",
    "Normalization",
    "StageSpec",
    "VariantSpec",
    "build",
    "cam",
    "compound_coefficients",
    "decode_predictions",
    "evaluate",
    "feature_info",
    "feature_model",
    "flops_multiplier",
    "get_variant",
    "imagenet_classes",
    "load_image",
    "overlay",
    "plan_blocks",
    "preprocess_input",
    "profile",
    "read_image",
    "save_cam",
    "variant_names",
]


def evaluate(model, data, **kwargs):
    """Top-1/top-5 accuracy, per-class precision and recall of a model, a `.keras` file,
    a SavedModel or a `.tflite` on a labelled folder: `keras_effnet.export.evaluate`."""
    from keras_effnet.export.evaluate import evaluate as _evaluate

    return _evaluate(model, data, **kwargs)


def build(variant: str, **kwargs):
    """Build a named variant by string ('b4', 'lite0', 'edgetpu-s'); kwargs as for
    `EfficientNetB0`."""
    from keras_effnet.builder import build_efficientnet

    return build_efficientnet(get_variant(variant), **kwargs)
