"""The independent PyTorch implementations our conversions are proven against, with
timm's tensor names for their state dicts:

* efficientnet_lite_pytorch (lukemelas' EfficientNet-PyTorch with the Lite variants; it
  needs only torch) for B0-B8, L2 and Lite0-4;
* `EdgeTPUReference`, written here from tensorflow/tpu's EdgeTPU builder (its block
  strings and scaling coefficients) and timm's `EdgeResidual` names, for EdgeTPU-S/M/L,
  which no torch-only library has (timm's needs torchvision, whose PyPI wheels are CUDA
  builds that do not register with the CPU torch).

Used by tests/test_weights.py and benchmarks/weights_table.py; imports nothing of the
tests' conftest, so a benchmark can use it."""

import math

import torch
import torch.nn.functional as F
from efficientnet_lite_pytorch import EfficientNet
from efficientnet_lite_pytorch.utils import round_repeats
from torch import nn

# tensorflow/tpu models/official/efficientnet/edgetpu/efficientnet_edgetpu_builder.py:
# blocks 'r1_k3_s11_e4_i24_o24_c1_noskip', 'r2_k3_s22_e8_i24_o32_c1',
# 'r4_k3_s22_e8_i32_o48_c1', 'r5_k5_s22_e8_i48_o96', 'r4_k5_s11_e8_i96_o144',
# 'r2_k5_s22_e8_i144_o192' (c1: no depthwise), as (repeats, kernel, stride, expand,
# in, out, fused, skip); (width, depth) per model; stem 32, head 1280, ReLU, BN eps 1e-3
EDGETPU_BLOCKS = ((1, 3, 1, 4, 24, 24, True, False), (2, 3, 2, 8, 24, 32, True, True),
                  (4, 3, 2, 8, 32, 48, True, True), (5, 5, 2, 8, 48, 96, False, True),
                  (4, 5, 1, 8, 96, 144, False, True), (2, 5, 2, 8, 144, 192, False, True))
EDGETPU_SCALING = {"edgetpu-s": (1.0, 1.0), "edgetpu-m": (1.0, 1.1), "edgetpu-l": (1.2, 1.4)}


def _round_filters(filters: int, width: float, divisor: int = 8) -> int:
    """tensorflow/tpu's round_filters: scale, round to the divisor, never down by 10%."""
    scaled = filters * width
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    return int(rounded + divisor if rounded < 0.9 * scaled else rounded)


class _SameConv(nn.Conv2d):
    """A bias-free conv with TensorFlow's "same" padding (the extra pixel after)."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1):
        super().__init__(cin, cout, kernel, stride, bias=False, groups=groups)

    def forward(self, x):
        pads = []
        for size in (x.shape[3], x.shape[2]):  # F.pad takes the last axis first
            k, s = self.kernel_size[0], self.stride[0]
            total = max((math.ceil(size / s) - 1) * s + k - size, 0)
            pads += [total // 2, total - total // 2]
        return super().forward(F.pad(x, pads))


def _bn(channels: int):
    return nn.BatchNorm2d(channels, eps=1e-3)


class _Fused(nn.Module):
    """tensorflow/tpu's MBConvBlockWithoutDepthwise, timm's EdgeResidual names:
    kxk expansion conv_exp, BN, ReLU, 1x1 projection conv_pwl, BN. The stride sits on
    the projection (`stride_on="project"`, the released checkpoints' layout) or on
    the expansion ("expand")."""

    def __init__(self, cin, cout, mid, kernel, stride, skip, stride_on):
        super().__init__()
        self.conv_exp = _SameConv(cin, mid, kernel, stride if stride_on == "expand" else 1)
        self.bn1 = _bn(mid)
        self.conv_pwl = _SameConv(mid, cout, 1, stride if stride_on == "project" else 1)
        self.bn2 = _bn(cout)
        self.skip = skip and stride == 1 and cin == cout

    def forward(self, x):
        y = self.bn2(self.conv_pwl(F.relu(self.bn1(self.conv_exp(x)))))
        return x + y if self.skip else y


class _MBConv(nn.Module):
    """Expansion, depthwise, projection without SE; timm's InvertedResidual names."""

    def __init__(self, cin, cout, mid, kernel, stride, skip):
        super().__init__()
        self.conv_pw, self.bn1 = _SameConv(cin, mid, 1), _bn(mid)
        self.conv_dw, self.bn2 = _SameConv(mid, mid, kernel, stride, groups=mid), _bn(mid)
        self.conv_pwl, self.bn3 = _SameConv(mid, cout, 1), _bn(cout)
        self.skip = skip and stride == 1 and cin == cout

    def forward(self, x):
        y = F.relu(self.bn1(self.conv_pw(x)))
        y = self.bn3(self.conv_pwl(F.relu(self.bn2(self.conv_dw(y)))))
        return x + y if self.skip else y


class EdgeTPUReference(nn.Module):
    """EdgeTPU-S/M/L from tensorflow/tpu's definition, in timm's tensor names. The
    first block's expansion is declared input (24, scaled) x 4 although the stem gives
    32 (scaled): tensorflow/tpu sizes the expansion from the declared input."""

    def __init__(self, variant: str, classes: int = 1000, stride_on: str = "project"):
        super().__init__()
        width, depth = EDGETPU_SCALING[variant]
        stem = _round_filters(32, width)
        self.conv_stem, self.bn1 = _SameConv(3, stem, 3, 2), _bn(stem)
        stages, cin = [], stem
        for repeats, kernel, stride, expand, declared, out, fused, skip in EDGETPU_BLOCKS:
            declared, out = _round_filters(declared, width), _round_filters(out, width)
            blocks = []
            for j in range(math.ceil(depth * repeats)):
                mid = (declared if j == 0 else out) * expand
                s = stride if j == 0 else 1
                blocks.append(_Fused(cin, out, mid, kernel, s, skip, stride_on) if fused
                              else _MBConv(cin, out, mid, kernel, s, skip))
                cin = out
            stages.append(nn.Sequential(*blocks))
        self.blocks = nn.Sequential(*stages)
        head = _round_filters(1280, width)
        self.conv_head, self.bn2 = _SameConv(cin, head, 1), _bn(head)
        self.classifier = nn.Linear(head, classes)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv_stem(x)))
        x = F.relu(self.bn2(self.conv_head(self.blocks(x))))
        return self.classifier(x.mean((2, 3)))


def reference_model(variant: str, size: int, seed: int = 0):
    """`variant` ('b0' ... 'l2', 'lite0' ... 'lite4', 'edgetpu-s/m/l') with seeded random
    weights and BatchNorm statistics, in eval mode; ValueError for a variant neither
    implementation has."""
    torch.manual_seed(seed)
    if variant in EDGETPU_SCALING:
        model = EdgeTPUReference(variant)
        for module in model.modules():  # conv kernels of a scale that keeps activations O(1)
            if isinstance(module, nn.Conv2d):
                fan_in = module.weight[0].numel()
                module.weight.data.normal_(0.0, math.sqrt(2.0 / fan_in))
    else:
        model = EfficientNet.from_name(f"efficientnet-{variant}", image_size=size)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.normal_(0.0, 0.2)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.normal_(0.0, 0.2)
    return model.eval()


def _repeats(model, stage: int, last: int, args) -> int:
    """Blocks in `stage` as the library builds them: Lite keeps the first and last
    stage's repeats unscaled (`_fix_head_stem`)."""
    if getattr(model, "_fix_head_stem", False) and stage in (0, last):
        return args.num_repeat
    return round_repeats(args.num_repeat, model._global_params)


def timm_names(state: dict, model) -> dict:
    """lukemelas' tensor names -> timm's, from lukemelas' own block arguments: stage s,
    position j; blocks without expansion are timm's DepthwiseSeparableConv. The EdgeTPU
    reference already uses timm's names."""
    if isinstance(model, EdgeTPUReference):
        return {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    last = len(model._blocks_args) - 1
    where = [(s, j, args.expand_ratio != 1) for s, args in enumerate(model._blocks_args)
             for j in range(_repeats(model, s, last, args))]
    top = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2",
           "_fc": "classifier"}
    se = {"_se_reduce": "se.conv_reduce", "_se_expand": "se.conv_expand"}
    expanded = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw",
                "_bn1": "bn2", "_project_conv": "conv_pwl", "_bn2": "bn3", **se}
    separable = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw",
                 "_bn2": "bn2", **se}
    out = {}
    for key, value in state.items():
        if key.endswith("num_batches_tracked"):
            continue
        parts = key.split(".")
        if parts[0] == "_blocks":
            s, j, expand = where[int(parts[1])]
            module = (expanded if expand else separable)[parts[2]]
            out[f"blocks.{s}.{j}.{module}.{parts[3]}"] = value
        else:
            out[f"{top[parts[0]]}.{parts[1]}"] = value
    return out
