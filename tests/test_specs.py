import dataclasses

import pytest

from keras_effnet import specs
from keras_effnet.specs import (
    B0_STAGES,
    EDGETPU_STAGES,
    LITE_STAGES,
    VARIANTS,
    StageSpec,
    VariantSpec,
)


def test_b0_stages_are_paper_table_1():
    rows = [(s.kernel_size, s.strides, s.expand_ratio, s.filters_out, s.repeats)
            for s in B0_STAGES]
    assert rows == [
        (3, 1, 1, 16, 1), (3, 2, 6, 24, 2), (5, 2, 6, 40, 2), (3, 2, 6, 80, 3),
        (5, 1, 6, 112, 3), (5, 2, 6, 192, 4), (3, 1, 6, 320, 1),
    ]
    assert all(s.se_ratio == 0.25 for s in B0_STAGES)


def test_lite_is_b0_without_se():
    assert all(s.se_ratio == 0 for s in LITE_STAGES)
    assert [dataclasses.replace(s, se_ratio=0.25) for s in LITE_STAGES] == list(B0_STAGES)
    lite = VARIANTS["lite3"]
    assert (lite.activation, lite.scale_stem_head, lite.scale_end_repeats) == \
        ("relu6", False, False)


def test_edgetpu_fused_early_no_se():
    assert [s.kind for s in EDGETPU_STAGES] == ["fused"] * 3 + ["mbconv"] * 3
    assert all(s.se_ratio == 0 for s in EDGETPU_STAGES)
    assert VARIANTS["edgetpu-s"].activation == "relu"


@pytest.mark.parametrize("stage", B0_STAGES + EDGETPU_STAGES)
def test_stage_string_round_trip(stage):
    assert StageSpec.decode(stage.encode()) == stage


def test_stage_strings_read_like_tensorflow_tpu():
    assert B0_STAGES[1].encode() == "r2_k3_s2_e6_i16_o24_se0.25"
    assert EDGETPU_STAGES[0].encode() == "r1_k3_s1_e4_i24_o24_fused_noskip"
    text = ["r1_k3_s1_e1_i32_o16"]
    assert specs.encode_stages(specs.decode_stages(text)) == text


@pytest.mark.parametrize("bad", ["r1_k3_s1_e1_i32", "r1_k3_s1_e1_i32_o16_x9", ""])
def test_bad_stage_string(bad):
    with pytest.raises(ValueError, match="stage"):
        StageSpec.decode(bad)


def test_fused_stride_round_trips_and_is_checked():
    stage = EDGETPU_STAGES[1]
    moved = dataclasses.replace(stage, fused_stride="expand")
    assert moved.encode() == "r2_k3_s2_e8_i24_o32_fusedx"
    assert StageSpec.decode(moved.encode()) == moved
    assert StageSpec.decode(stage.encode()) == stage and stage.fused_stride == "project"
    with pytest.raises(ValueError, match="fused_stride"):
        dataclasses.replace(B0_STAGES[1], fused_stride="expand")
    with pytest.raises(ValueError, match="fused_stride"):
        dataclasses.replace(stage, fused_stride="depthwise")


def test_stage_rows_validate():
    with pytest.raises(ValueError, match="se_ratio"):
        StageSpec(kind="fused", kernel_size=3, strides=1, expand_ratio=4, filters_in=24,
                  filters_out=24, repeats=1, se_ratio=0.25)
    with pytest.raises(ValueError, match="repeats"):
        StageSpec(kind="mbconv", kernel_size=3, strides=1, expand_ratio=4, filters_in=24,
                  filters_out=24, repeats=0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        B0_STAGES[0].repeats = 3


def test_misspelt_variant_field_fails_loudly():
    with pytest.raises(TypeError):
        dataclasses.replace(VARIANTS["b0"], widht=1.2)


@pytest.mark.parametrize("name,expected", [
    ("b4", "b4"), ("EfficientNetB4", "b4"), ("efficientnetb4", "b4"), ("efficientnet-b4", "b4"),
    ("Lite0", "lite0"), ("EfficientNetEdgeTPUS", "edgetpu-s"), ("edgetpu_m", "edgetpu-m"),
])
def test_get_variant_names(name, expected):
    assert specs.get_variant(name).name == expected


def test_unknown_variant():
    with pytest.raises(ValueError, match="unknown EfficientNet variant 'b9'.*b0, b1"):
        specs.get_variant("b9")


def test_variant_table_is_complete():
    assert list(VARIANTS) == [f"b{i}" for i in range(9)] + ["l2"] + [
        f"lite{i}" for i in range(5)] + ["edgetpu-s", "edgetpu-m", "edgetpu-l"]
    assert [VARIANTS[f"b{i}"].resolution for i in range(9)] == \
        [224, 240, 260, 300, 380, 456, 528, 600, 672]
    # tensorflow/tpu efficientnet_builder.py: (width, depth, resolution) of B8 and L2
    assert [(VARIANTS[n].width, VARIANTS[n].depth, VARIANTS[n].resolution)
            for n in ("b8", "l2")] == [(2.2, 3.6, 672), (4.3, 5.3, 800)]
    assert [VARIANTS[n].constructor_name for n in ("b8", "l2", "lite4", "edgetpu-s")] == [
        "EfficientNetB8", "EfficientNetL2", "EfficientNetLite4", "EfficientNetEdgeTPUS"]


def test_rows_take_named_fields_only():
    """A row is written with its field names: a positional row (which silently swaps two
    numbers) or a misspelt name is a TypeError."""
    with pytest.raises(TypeError):
        StageSpec("mbconv", 3, 1, 6, 16, 24, 2)  # the positional form must fail
    b0 = VARIANTS["b0"]
    with pytest.raises(TypeError):
        VariantSpec("x", "x", "b", 1.0, 1.0, 224, 0.2, B0_STAGES, "swish")
    with pytest.raises(TypeError):
        VariantSpec(**{**dataclasses.asdict(b0), "stages": b0.stages, "resolutoin": 1})
    assert VariantSpec(**{f.name: getattr(b0, f.name) for f in dataclasses.fields(b0)}) == b0
