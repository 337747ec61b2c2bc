"""Named weight sets from the Hugging Face Hub (timm's safetensors ports), offline: the
tests fill a Hub cache with files they make and turn huggingface_hub's offline mode on,
so nothing reaches the network."""

import hashlib
import os

import numpy as np
import pytest

import keras_effnet as ke
from keras_effnet import weight_sets
from keras_effnet.weights import keras_to_state_dict


@pytest.fixture
def hub_cache(tmp_path, monkeypatch, isolated_keras_home):
    """An empty Hub cache with huggingface_hub offline; returns it."""
    constants = pytest.importorskip("huggingface_hub.constants")
    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return cache


def _publish(cache, repo_id: str, model, variant: str, filename="model.safetensors"):
    """Put `model`'s weights in timm's layout into `cache` as huggingface_hub lays out a
    download of `repo_id` at revision main: blobs named by their sha256, a snapshot
    folder per commit linking to them, refs/main naming the commit. Returns the blob."""
    from safetensors.numpy import save

    content = save(keras_to_state_dict(model, variant))  # a name, as the README writes it
    digest = hashlib.sha256(content).hexdigest()
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    commit = hashlib.sha1(content).hexdigest()
    blob = repo / "blobs" / digest
    blob.parent.mkdir(parents=True)
    blob.write_bytes(content)
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (snapshot / filename).symlink_to(os.path.relpath(blob, snapshot))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    return blob


def _random(variant: str, seed: int, **kwargs):
    import keras

    keras.utils.set_random_seed(seed)
    return ke.build(variant, weights=None, **kwargs)


def _same_weights(a, b):
    """Every weight but the stem statistics, which follow the weight set."""
    pairs = [(layer, b.get_layer(layer.name)) for layer in a.layers
             if layer.weights and layer.name != "normalization"]
    return pairs and all(np.array_equal(x, y) for p, q in pairs
                         for x, y in zip(p.get_weights(), q.get_weights()))


def test_published_sets_load_offline_from_the_hub_cache(hub_cache, isolated_keras_home):
    """EfficientNetLite4(weights="imagenet"), EfficientNetB3(weights="noisy-student") and
    EfficientNetEdgeTPUS(weights="imagenet") from a populated cache, network off; each
    converted once and cached as a Keras .weights.h5 named with the file's sha256."""
    for constructor, variant, name in ((ke.EfficientNetLite4, "lite4", "imagenet"),
                                       (ke.EfficientNetB3, "b3", "noisy-student"),
                                       (ke.EfficientNetEdgeTPUS, "edgetpu-s", "imagenet")):
        ws = weight_sets.find(variant, name)
        source = _random(variant, seed=1, input_shape=(64, 64, 3))
        blob = _publish(hub_cache, ws.repo_id, source, variant)
        model = constructor(weights=name)
        assert _same_weights(model, source), variant
        # the preprocessing follows the weights: size and statistics of the set
        assert model.input_shape[1:3] == (ws.resolution, ws.resolution)
        mean = model.get_layer("normalization").mean
        np.testing.assert_allclose(np.ravel(mean), ws.mean, rtol=1e-6)
        cached = isolated_keras_home / "models" / "keras_effnet"
        assert [p.name for p in cached.glob(f"*{name}_{blob.name[:12]}.weights.h5")], variant
    assert ke.EfficientNetLite4(weights="imagenet").input_shape[1] == 380  # timm-validated
    assert weight_sets.find("lite4", "imagenet").note.startswith("validated at 380")


def test_advprop_normalises_to_minus_one_one(hub_cache):
    """AdvProp was trained on x * 2 / 255 - 1: the built-in preprocessing says so."""
    source = _random("b0", seed=2)
    _publish(hub_cache, weight_sets.find("b0", "advprop").repo_id, source, "b0")
    model = ke.EfficientNetB0(weights="advprop")
    assert _same_weights(model, source)
    x = np.array([[[[0.0, 127.5, 255.0]]]], np.float32)
    stem = ke.EfficientNetB0(weights="advprop").get_layer("normalization")
    np.testing.assert_allclose(np.ravel(stem(x / 255.0)), [-1.0, 0.0, 1.0], atol=1e-6)


def test_no_network_and_no_cache_says_how_to_fetch(hub_cache):
    with pytest.raises(OSError) as info:
        ke.EfficientNetLite3(weights="imagenet")
    message = str(info.value)
    for part in ("timm/tf_efficientnet_lite3.in1k", "model.safetensors", "main",
                 str(hub_cache), "hf download"):
        assert part in message, (part, message)


def test_a_set_the_variant_lacks_names_those_it_has():
    with pytest.raises(ValueError, match=r"no 'advprop'.*'imagenet'"):
        ke.EfficientNetLite0(weights="advprop")
    with pytest.raises(ValueError, match=r"'advprop', 'randaugment'"):
        ke.EfficientNetB8(weights="imagenet")


def test_a_changed_file_is_refused(hub_cache):
    """The blob no longer has the content hash it is named by (a corrupt or replaced
    download): refused, nothing loaded."""
    source = _random("b0", seed=3)
    blob = _publish(hub_cache, "timm/tf_efficientnet_b0.aa_in1k", source, "b0")
    data = bytearray(blob.read_bytes())
    data[-1] ^= 1
    blob.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="sha256"):
        ke.EfficientNetB0(weights="autoaugment")


def test_the_file_is_hashed_when_converted_not_at_every_build(hub_cache, monkeypatch):
    """The first build hashes the downloaded file and converts it; later builds find the
    conversion cached under the file's content hash and do not read the file again
    (hashing L2's 1.9 GB at every build would cost seconds)."""
    from keras_effnet import hub

    real, hashed = hub.sha256_of, []
    monkeypatch.setattr(hub, "sha256_of", lambda path: hashed.append(path) or real(path))
    source = _random("b0", seed=5)
    blob = _publish(hub_cache, weight_sets.find("b0", "noisy-student").repo_id, source, "b0")
    assert _same_weights(ke.EfficientNetB0(weights="noisy-student"), source)
    assert [os.path.realpath(p) for p in hashed] == [str(blob)]
    assert _same_weights(ke.EfficientNetB0(weights="noisy-student"), source)
    assert len(hashed) == 1


def test_any_hub_repo_by_id(hub_cache):
    source = _random("lite0", seed=4)
    _publish(hub_cache, "someone/my-lite0", source, "lite0", filename="weights.safetensors")
    model = ke.EfficientNetLite0(weights="hub:someone/my-lite0:weights.safetensors")
    assert _same_weights(model, source)
    with pytest.raises(ValueError, match="only .safetensors"):
        ke.EfficientNetLite0(weights="hub:someone/my-lite0:weights.bin")


def test_a_file_without_a_content_hash_is_named_by_its_own(hub_cache, isolated_keras_home):
    """A file the Hub stores in git, not LFS, has a blob named by its git hash: nothing to
    check it against, so its own sha256 names the cached conversion."""
    source = _random("lite0", seed=6)
    blob = _publish(hub_cache, "someone/git-lite0", source, "lite0")
    git_named = blob.with_name("0" * 40)
    blob.rename(git_named)
    link = next((hub_cache / "models--someone--git-lite0" / "snapshots").glob("*/*"))
    link.unlink()
    link.symlink_to(os.path.relpath(git_named, link.parent))
    assert _same_weights(ke.EfficientNetLite0(weights="hub:someone/git-lite0"), source)
    digest = hashlib.sha256(git_named.read_bytes()).hexdigest()
    cached = isolated_keras_home / "models" / "keras_effnet"
    assert list(cached.glob(f"*someone--git-lite0_{digest[:12]}.weights.h5"))


def test_the_table_is_complete():
    """Every named variant has at least one set; every Hub row names timm's port of it."""
    for name in ke.VARIANTS:
        assert weight_sets.sets_for(name), name
    for ws in weight_sets.WEIGHT_SETS:
        assert 70 < ws.top1 < 90 and ws.top1_source
        if ws.source == "hub":
            assert ws.repo_id.startswith("timm/tf_efficientnet_") and ws.filename.endswith(
                ".safetensors")
