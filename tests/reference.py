"""The independent PyTorch implementation our conversions are proven against:
efficientnet_lite_pytorch (lukemelas' EfficientNet-PyTorch with the Lite variants; it
needs only torch), and timm's tensor names for its state dicts. Used by
tests/test_weights.py and benchmarks/weights_table.py; imports nothing of the tests'
conftest, so a benchmark can use it."""

import torch
from efficientnet_lite_pytorch import EfficientNet
from efficientnet_lite_pytorch.utils import round_repeats


def reference_model(variant: str, size: int, seed: int = 0):
    """`variant` ('b0' ... 'l2', 'lite0' ... 'lite4') with seeded random weights and
    BatchNorm statistics, in eval mode; ValueError for a variant the library lacks."""
    torch.manual_seed(seed)
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
    position j; blocks without expansion are timm's DepthwiseSeparableConv."""
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
