"""Compound scaling as pure functions: coefficients, rounding rules, block plans.

`plan_blocks` turns a variant's stage rows and coefficients into the concrete
list of blocks the builder creates, so the arithmetic of scaling can be read,
tested and reused (profiling, weight-file checks) without building a model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from keras_effnet.specs import FUSED, StageSpec, VariantSpec

__all__ = [
    "MIN_INPUT_SIZE",
    "BlockPlan",
    "compound_coefficients",
    "flops_multiplier",
    "head_filters",
    "plan_blocks",
    "round_filters",
    "round_repeats",
    "round_resolution",
    "stem_filters",
]

MIN_INPUT_SIZE = 32  # five stride-2 reductions: 32 px leaves a 1x1 feature map
DEPTH_DIVISOR = 8  # paper / keras.applications: channel counts are multiples of 8


def compound_coefficients(
    phi: float, alpha: float = 1.2, beta: float = 1.1, gamma: float = 1.15
) -> tuple[float, float, float]:
    """(depth, width, resolution) multipliers alpha**phi, beta**phi, gamma**phi.

    The defaults are the paper's grid-search result for B0 (section 4). phi may
    be any real number, negative for models smaller than B0. Note that the
    published B1-B7 were not built from these values: their coefficients were
    rounded by hand (B1 is depth 1.1, width 1.0, 240 px, where phi=1 gives
    depth 1.2, width 1.1, 258 px), so the named constructors use the table in
    `keras_effnet.specs`, not this function.
    """
    for label, value in (("phi", phi), ("alpha", alpha), ("beta", beta), ("gamma", gamma)):
        if not isinstance(value, (int, float)) or isinstance(value, bool) or \
                not math.isfinite(value):
            raise ValueError(f"{label} must be a finite real number, got {value!r}")
    for label, value in (("alpha", alpha), ("beta", beta), ("gamma", gamma)):
        if value <= 0:
            raise ValueError(f"{label} must be > 0, got {value!r}")
    return alpha**phi, beta**phi, gamma**phi


def flops_multiplier(alpha: float, beta: float, gamma: float) -> float:
    """FLOPs grow by alpha * beta**2 * gamma**2 per unit of phi (paper eq. 3)."""
    return alpha * beta**2 * gamma**2


def round_filters(filters: int, width: float, divisor: int = DEPTH_DIVISOR) -> int:
    """Scale a channel count by `width`, to the nearest multiple of `divisor`."""
    scaled = filters * width
    new = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    # never round down by more than 10%: keeps small widths from collapsing
    if new < 0.9 * scaled:
        new += divisor
    return new


def round_repeats(repeats: int, depth: float) -> int:
    """Scale a repeat count by `depth`, rounding up so no stage disappears."""
    return math.ceil(depth * repeats)


def round_resolution(resolution: float) -> int:
    """Nearest multiple of 4, as every published EfficientNet size is (224 ... 600)."""
    return max(MIN_INPUT_SIZE, round(resolution / 4.0) * 4)


@dataclass(frozen=True)
class BlockPlan:
    """One concrete block after scaling: what the builder instantiates."""

    name: str  # keras.applications prefix, e.g. "block2a_"
    stage: int
    kind: str
    kernel_size: int
    strides: int
    expand_ratio: int
    filters_in: int  # declared input width (sets the expansion width)
    filters_out: int
    se_filters: int  # 0: no squeeze-excitation
    id_skip: bool
    drop_rate: float
    fused_stride: str = "project"  # fused blocks: the conv that strides (StageSpec)

    @property
    def expand_filters(self) -> int:
        return self.filters_in * self.expand_ratio


def stem_filters(variant: VariantSpec) -> int:
    if not variant.scale_stem_head:
        return variant.stem_filters
    return round_filters(variant.stem_filters, variant.width)


def head_filters(variant: VariantSpec) -> int:
    if not variant.scale_stem_head:
        return variant.head_filters
    return round_filters(variant.head_filters, variant.width)


def _stage_repeats(variant: VariantSpec, index: int, stage: StageSpec) -> int:
    last = len(variant.stages) - 1
    if not variant.scale_end_repeats and index in (0, last):
        return stage.repeats
    return round_repeats(stage.repeats, variant.depth)


def plan_blocks(variant: VariantSpec, drop_connect_rate: float = 0.2) -> list[BlockPlan]:
    """Every block of `variant` in build order, with keras.applications names
    and a stochastic-depth rate rising linearly from 0 over the blocks."""
    repeats = [_stage_repeats(variant, i, s) for i, s in enumerate(variant.stages)]
    total = float(sum(repeats))
    if max(repeats) > 26:
        raise ValueError(
            f"depth {variant.depth} gives a stage of {max(repeats)} blocks; block names "
            "(block1a ... block1z) allow at most 26 per stage"
        )
    plans = []
    index = 0
    for i, (stage, n) in enumerate(zip(variant.stages, repeats)):
        filters_in = round_filters(stage.filters_in, variant.width)
        if i == 0 and stage.filters_in == variant.stem_filters:
            # the first stage reads the stem: when the stem is not scaled (Lite)
            # its declared input is the stem's actual width
            filters_in = stem_filters(variant)
        filters_out = round_filters(stage.filters_out, variant.width)
        for j in range(n):
            block_in = filters_in if j == 0 else filters_out
            se_filters = max(1, int(block_in * stage.se_ratio)) if stage.se_ratio else 0
            plans.append(
                BlockPlan(
                    name=f"block{i + 1}{chr(97 + j)}_",
                    stage=i,
                    kind=stage.kind,
                    kernel_size=stage.kernel_size,
                    strides=stage.strides if j == 0 else 1,
                    expand_ratio=stage.expand_ratio,
                    filters_in=block_in,
                    filters_out=filters_out,
                    se_filters=se_filters,
                    id_skip=stage.id_skip,
                    drop_rate=drop_connect_rate * index / total,
                    fused_stride=stage.fused_stride,
                )
            )
            index += 1
    return plans


def count_trainable_params(variant: VariantSpec, classes: int = 1000,
                           include_top: bool = True) -> int:
    """The trainable parameters of `variant` as the builder makes it, counted from the
    plan without building (L2's 480 M take a 2 GB, 13 s build). Batch norms train gamma
    and beta; the stem normalisation trains nothing."""

    def conv(c_in, c_out, k=1, bias=False):
        return c_in * c_out * k * k + (c_out if bias else 0)

    def bn(c):
        return 2 * c

    channels = stem_filters(variant)
    total = conv(3, channels, 3) + bn(channels)
    for plan in plan_blocks(variant):
        width = plan.expand_filters
        if plan.kind == FUSED:
            total += conv(channels, width, plan.kernel_size) + bn(width)
        else:
            if plan.expand_ratio != 1:
                total += conv(channels, width) + bn(width)
            total += width * plan.kernel_size ** 2 + bn(width)  # depthwise
            if plan.se_filters:
                total += conv(width, plan.se_filters, bias=True)
                total += conv(plan.se_filters, width, bias=True)
        total += conv(width, plan.filters_out) + bn(plan.filters_out)
        channels = plan.filters_out
    head = head_filters(variant)
    total += conv(channels, head) + bn(head)
    return total + (head * classes + classes if include_top else 0)
