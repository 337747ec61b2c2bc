"""keras' own applications test cases (keras/src/applications/applications_test.py),
restated for our B0-B7 in both image data formats: variable input channels, custom input
shape and tensor, pooling, classifier activation. B0 and B3 run in make test, the rest with
--run-slow. keras' `test_application_base` (ImageNet weights on an elephant photo) is
covered by tests/test_weights.py; our models are built symbolically here, so
channels_first needs no NCHW kernel."""

import keras
import pytest

import keras_effnet as ke

# the head's width per variant, as keras' MODEL_LIST states it
LAST_DIMS = {"b0": 1280, "b1": 1280, "b2": 1408, "b3": 1536, "b4": 1792, "b5": 2048,
             "b6": 2304, "b7": 2560}
FAST = ("b0", "b3")
CASES = [pytest.param(f"b{i}", fmt, marks=() if f"b{i}" in FAST else pytest.mark.slow,
                      id=f"b{i}-{fmt}")
         for i in range(8) for fmt in ("channels_last", "channels_first")]


@pytest.fixture
def data_format(request):
    previous = keras.config.image_data_format()
    keras.config.set_image_data_format(request.param)
    yield request.param
    keras.config.set_image_data_format(previous)


def _app(variant):
    return getattr(ke, ke.get_variant(variant).constructor_name)


def _shape(fmt, channels, size):
    return (channels, size, size) if fmt == "channels_first" else (size, size, channels)


@pytest.mark.parametrize("variant,data_format", CASES, indirect=["data_format"])
def test_notop_variable_input_channels(variant, data_format):
    expected = [None, LAST_DIMS[variant], None, None] if data_format == "channels_first" \
        else [None, None, None, LAST_DIMS[variant]]
    for channels in (1, 4):
        model = _app(variant)(weights=None, include_top=False,
                              input_shape=_shape(data_format, channels, None))
        assert list(model.outputs[0].shape) == expected


@pytest.mark.parametrize("variant,data_format", CASES, indirect=["data_format"])
def test_notop_custom_input_shape_and_tensor(variant, data_format):
    axis = 1 if data_format == "channels_first" else -1
    model = _app(variant)(weights=None, include_top=False,
                          input_shape=_shape(data_format, 3, 123))
    assert model.outputs[0].shape[axis] == LAST_DIMS[variant]
    inputs = keras.Input(shape=_shape(data_format, 4, 200), name="custom_input")
    tensor = keras.layers.Conv2D(3, (2, 2), padding="valid", strides=(2, 2))(inputs)
    model = _app(variant)(weights=None, include_top=False, input_tensor=tensor)
    assert model.outputs[0].shape[axis] == LAST_DIMS[variant]


@pytest.mark.parametrize("variant,data_format", CASES, indirect=["data_format"])
def test_pooling_and_classifier_activation(variant, data_format):
    model = _app(variant)(weights=None, include_top=False, pooling="max")
    assert list(model.outputs[0].shape) == [None, LAST_DIMS[variant]]
    model = _app(variant)(weights=None, include_top=True, classifier_activation="softmax")
    assert model.layers[-1].activation.__name__ == "softmax"
