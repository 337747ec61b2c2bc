"""Every variant x published weight set, from the table in keras_effnet/weight_sets.py,
and the conversion proof for every variant an independent implementation covers.

    python benchmarks/weights_table.py [--parity_size 240] [--out DIR]

Per set: source and location, revision and sha256 (pinned or "checked against the
Hub's content hash"), resolution and evaluation crop, input normalisation, trainable
parameters (counted from the plan; tests check that count against built models),
published top-1 and its source.

Parity: for every variant, the independent PyTorch implementation of tests/reference.py
(efficientnet_lite_pytorch, lukemelas' EfficientNet-PyTorch with the Lite variants, for
B0-B8, L2 and Lite0-4; a model written from tensorflow/tpu's EdgeTPU builder for
EdgeTPU-S/M/L) gets seeded random weights and randomised BatchNorm statistics, saved as a
timm-layout safetensors file, loaded into ours through `weights=<file>` (the path users
take), and both run on scikit-image photos at --parity_size px; reported: the relative
max logit error.
Writes weights_table.json and .md, and the README's `weights_table` block.
"""

from __future__ import annotations

import os
import pathlib
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import _bench
import numpy as np
from absl import app, flags

REPO = pathlib.Path(__file__).resolve().parents[1]
FLAGS = flags.FLAGS
flags.DEFINE_integer("parity_size", 240, "image size of the parity check (240: a 15x15 stage)")
flags.DEFINE_list("parity", ["all"], "variants to check against the reference ('all', 'none')")
flags.DEFINE_string("out", str(REPO / "benchmarks" / "results"), "output folder")
flags.DEFINE_string("name", "weights_table", "results file name")
flags.DEFINE_boolean("update_readme", True, "rewrite the generated block in README.md")


def _params(variant: str) -> int:
    import keras_effnet as ke
    from keras_effnet.scaling import count_trainable_params

    return count_trainable_params(ke.get_variant(variant))  # = the built model's (tests)


def _parity(variant: str, size: int) -> float | None:
    """Relative max logit error of ours against the independent reference with the same
    random weights; None when there is no reference for the variant."""
    try:
        import torch

        sys.path.insert(0, str(REPO / "tests"))
        from reference import reference_model, timm_names  # the tests' own oracle
    except ImportError:
        return None
    from safetensors.numpy import save_file

    import keras_effnet as ke

    try:
        reference = reference_model(variant, size)
    except ValueError:  # "model_name should be one of: ...": a variant neither reference has
        return None
    state = {k: v.detach().numpy().copy() for k, v in reference.state_dict().items()}
    spec = ke.get_variant(variant)
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, f"{variant}.safetensors")
        save_file(timm_names(state, reference), path)
        ours = ke.build(variant, weights=path, input_shape=(size, size, 3),
                        classifier_activation=None)
    import skimage.data

    photos = [ke.load_image(getattr(skimage.data, n)(), size) for n in ("chelsea", "coffee")]
    x = np.stack(photos)
    mean, std = np.array(spec.input_mean) * 255, np.array(spec.input_std) * 255
    with torch.no_grad():
        expected = reference(torch.from_numpy(((x - mean) / std).astype("float32")
                                              .transpose(0, 3, 1, 2))).numpy()
    got = ours.predict(x, verbose=0)
    return float(np.abs(got - expected).max() / np.abs(expected).max())


def _normalisation(ws) -> str:
    if ws.mean == ws.std == (0.5, 0.5, 0.5):
        return "x / 127.5 - 1"
    if round(ws.mean[0] * 255) == 127 and round(ws.std[0] * 255) == 128:
        return "(x - 127) / 128"
    return "ImageNet mean/std"


def main(argv):
    del argv
    import keras_effnet as ke
    from keras_effnet.weight_sets import WEIGHT_SETS

    variants = list(ke.VARIANTS)
    check = variants if FLAGS.parity == ["all"] else [v for v in FLAGS.parity if v != "none"]
    data = {"machine": _bench.machine(), "parity_size": FLAGS.parity_size, "variants": {}}
    for variant in variants:
        print(f"{variant}: counting parameters" + (", parity" if variant in check else ""),
              flush=True)
        row = {"params": _params(variant),
               "parity_rel_error": _parity(variant, FLAGS.parity_size) if variant in check
               else None,
               "sets": [{"name": ws.name, "source": ws.source, "location": ws.location,
                             "revision": ws.revision, "sha256": ws.sha256,
                             "resolution": ws.resolution, "normalisation": _normalisation(ws),
                             "top1": ws.top1, "top1_source": ws.top1_source, "note": ws.note}
                        for ws in WEIGHT_SETS if ws.variant == variant]}
        data["variants"][variant] = row
    md = ["# Weight sets", "",
          ("Generated by `benchmarks/weights_table.py` from keras_effnet/weight_sets.py. "
           "Crop: the centre size / (size + 32) of the shorter side. sha256 \"hub\": "
           "checked against the Hub's content hash at download (no pinned hash yet). "
           "Parity: relative max logit error against an independent PyTorch implementation "
           "(tests/reference.py: efficientnet_lite_pytorch; for EdgeTPU, a model written "
           f"from tensorflow/tpu's builder) with the same random weights at "
           f"{FLAGS.parity_size} px (timm-layout safetensors, `weights=<file>`); - where "
           "no reference ran."), "",
          ("| variant | params | parity | set | source | resolution | normalisation | "
          "published top-1 |"), "|" + "---|" * 8]
    for variant, row in data["variants"].items():
        error = row["parity_rel_error"]
        parity = "-" if error is None else f"{error:.1e}"
        for ws in row["sets"]:
            md.append(f"| {ke.get_variant(variant).constructor_name} | {row['params']:,} | "
                      f"{parity} | {ws['name']} | {ws['location']} | {ws['resolution']} | "
                      f"{ws['normalisation']} | {ws['top1']:.1f}% ({ws['top1_source']}) |")
    _bench.publish(FLAGS.name, data, md, FLAGS.out, FLAGS.update_readme)
    return 0


if __name__ == "__main__":
    sys.exit(app.run(main))
