import math

import pytest

from keras_effnet import scaling
from keras_effnet.specs import VARIANTS


def test_round_filters_rules():
    assert scaling.round_filters(32, 1.0) == 32
    assert scaling.round_filters(32, 1.1) == 32  # 35.2 -> 32: within 10%
    assert scaling.round_filters(32, 1.2) == 40  # 38.4 -> 40
    assert scaling.round_filters(1280, 2.0) == 2560
    assert scaling.round_filters(16, 0.1) == 8  # never below the divisor
    assert scaling.round_filters(20, 0.6) == 16  # 12 -> 16: rounding to 8 would lose 33%


def test_round_repeats_ceils():
    assert [scaling.round_repeats(r, 3.1) for r in (1, 2, 3, 4)] == [4, 7, 10, 13]
    assert scaling.round_repeats(1, 0.2) == 1


def test_compound_coefficients():
    d, w, r = scaling.compound_coefficients(1)
    assert (d, w, r) == pytest.approx((1.2, 1.1, 1.15))
    assert scaling.compound_coefficients(0) == (1.0, 1.0, 1.0)
    d, w, r = scaling.compound_coefficients(-2)
    assert d == pytest.approx(1.2**-2) and w < 1 and r < 1
    # paper eq. 3: FLOPs grow ~2**phi
    assert scaling.flops_multiplier(1.2, 1.1, 1.15) == pytest.approx(1.92, abs=0.01)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), "1", None, True])
def test_compound_coefficients_rejects(bad):
    with pytest.raises(ValueError, match="phi"):
        scaling.compound_coefficients(bad)
    with pytest.raises(ValueError, match="alpha"):
        scaling.compound_coefficients(1, alpha=0)


def test_round_resolution():
    assert scaling.round_resolution(224 * 1.3) == 292
    assert scaling.round_resolution(224 * 2) == 448
    assert scaling.round_resolution(3) == 32


def test_plan_b7_block_names_and_drop_rates():
    plans = scaling.plan_blocks(VARIANTS["b7"], drop_connect_rate=0.2)
    assert len(plans) == 55
    assert plans[0].name == "block1a_" and plans[-1].name == "block7d_"
    assert plans[0].drop_rate == 0 and plans[-1].drop_rate == pytest.approx(0.2 * 54 / 55)
    assert [p.strides for p in plans if p.name.endswith("a_")] == [1, 2, 2, 2, 1, 2, 1]


def test_plan_lite_keeps_stem_first_and_last_stage():
    plans = scaling.plan_blocks(VARIANTS["lite4"])
    stage_counts = [sum(p.stage == i for p in plans) for i in range(7)]
    assert stage_counts == [1, 4, 4, 6, 6, 8, 1]  # ceil(1.8 * r) except the ends
    assert plans[0].filters_in == 32  # the unscaled stem feeds block1a
    assert scaling.stem_filters(VARIANTS["lite4"]) == 32
    assert scaling.head_filters(VARIANTS["lite4"]) == 1280
    assert all(p.se_filters == 0 for p in plans)


def test_plan_edgetpu_first_block_expands_declared_width():
    first = scaling.plan_blocks(VARIANTS["edgetpu-s"])[0]
    assert (first.kind, first.filters_in, first.expand_filters, first.id_skip) == \
        ("fused", 24, 96, False)


def test_too_deep_names_fail():
    import dataclasses

    deep = dataclasses.replace(VARIANTS["b0"], depth=10.0)
    with pytest.raises(ValueError, match="at most 26"):
        scaling.plan_blocks(deep)
    assert math.ceil(4 * 6.5) == 26
    deep = dataclasses.replace(VARIANTS["b0"], depth=6.5)
    assert len(scaling.plan_blocks(deep)) == 7 + 13 + 13 + 20 + 20 + 26 + 7
