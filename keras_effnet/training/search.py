"""The compound-scaling grid search: paper section 4, step 1.

    results = search(SearchConfig(data="photos/", out="search/", phi=1))
    print(results["table"])

Fix phi (1: twice the FLOPs of the baseline), try every (alpha, beta, gamma)
>= 1 of a small grid whose FLOPs factor alpha * beta^2 * gamma^2 lies within
`tolerance` of 2, train each candidate (depth x alpha^phi, width x beta^phi,
resolution x gamma^phi) with the same short budget, and keep the most
accurate; ties go to the one with fewer MACs. The paper found
alpha=1.2, beta=1.1, gamma=1.15 for B0 on ImageNet.

A search on little compute can start from a smaller baseline: `base_phi=-4`
first shrinks B0 with the paper's coefficients, then scales that network by
each candidate. Every candidate trains through `train()` in its own folder,
so a search stopped at any point and started again with the same settings
skips the finished candidates and resumes the interrupted one from its last
checkpoint.

    out/candidates/a1.20-b1.10-g1.15/   that candidate's `train` output
    out/search.json                     settings, every finished candidate, the winner
    out/search.md                       the table
    out/search.png                      accuracy vs MACs, the winner marked
"""

from __future__ import annotations

import dataclasses
import io
import itertools
import json
import math

from absl import logging

from keras_effnet.files import exists, makedirs, read_bytes, write_bytes, write_json, write_text
from keras_effnet.scaling import compound_coefficients, flops_multiplier, round_resolution
from keras_effnet.specs import get_variant
from keras_effnet.training.trainer import TrainConfig, train

__all__ = ["SearchConfig", "baseline_size", "candidate_grid", "search"]

PAPER_COEFFICIENTS = (1.2, 1.1, 1.15)  # paper section 4: B0's grid-search result


def candidate_grid(step: float = 0.1, max_value: float = 1.4, target: float = 2.0,
                   tolerance: float = 0.1) -> list[tuple[float, float, float]]:
    """Every (alpha, beta, gamma) on the grid 1, 1+step, ..., max_value with
    |alpha * beta^2 * gamma^2 - target| <= tolerance, ordered by that distance."""
    if not 0 < step <= max_value - 1.0 + 1e-9:
        raise ValueError(f"expected 0 < step <= max_value - 1, got step={step}, "
                         f"max_value={max_value}")
    if tolerance < 0 or target < 1:
        raise ValueError(f"expected target >= 1 and tolerance >= 0, got {target}, {tolerance}")
    values = [round(1.0 + i * step, 6) for i in range(round((max_value - 1.0) / step) + 1)]
    grid = [(a, b, g) for a, b, g in itertools.product(values, repeat=3)
            if abs(flops_multiplier(a, b, g) - target) <= tolerance + 1e-9]
    if not grid:
        raise ValueError(f"no (alpha, beta, gamma) on a grid of step {step} up to {max_value} "
                         f"has alpha*beta^2*gamma^2 within {tolerance} of {target}; widen the "
                         "tolerance or the grid")
    return sorted(grid, key=lambda c: (abs(flops_multiplier(*c) - target), c))


@dataclasses.dataclass
class SearchConfig:
    """Settings of one search; the flags of `keras-effnet search` map onto these."""

    data: str
    out: str
    base: str = "b0"
    phi: float = 1.0
    base_phi: float = 0.0  # shrink the baseline first (paper coefficients), for small budgets
    image_size: int | None = None  # the baseline's resolution (default: baseline_size)
    candidates: list[tuple[float, float, float]] | None = None  # default: candidate_grid()
    grid_step: float = 0.1
    grid_max: float = 1.4
    tolerance: float = 0.1
    max_candidates: int | None = None  # the closest to the FLOPs target first
    val_data: str | None = None  # default: evaluate on --data (a smoke figure, said so)
    val_split: float = 0.0
    strategy: str = "auto"
    epochs: int = 1
    steps_per_epoch: int | None = None
    batch: int = 16
    learning_rate: float | None = None
    warmup_epochs: float = 0.0
    ema: bool = False  # a weight average over a few dozen steps only lags the weights
    jit_compile: bool | str = "auto"
    seed: int = 0
    verbose: int | str = "auto"


def _tag(candidate) -> str:
    return "a{:.2f}-b{:.2f}-g{:.2f}".format(*candidate)


def _candidates(config: SearchConfig) -> list[tuple[float, float, float]]:
    if config.candidates:
        chosen = [tuple(float(v) for v in c) for c in config.candidates]
        for c in chosen:
            if len(c) != 3 or min(c) < 1.0:
                raise ValueError(f"a candidate is (alpha, beta, gamma), each >= 1; got {c}")
    else:
        chosen = candidate_grid(config.grid_step, config.grid_max, 2.0, config.tolerance)
    if config.max_candidates:
        chosen = chosen[:config.max_candidates]
    return chosen


def baseline_size(config: SearchConfig) -> int:
    """The baseline's resolution: `image_size` when given, else the variant's shrunk by
    base_phi with the paper's gamma, like its depth and width."""
    if config.image_size:
        return config.image_size
    _, _, resolution = compound_coefficients(config.base_phi, *PAPER_COEFFICIENTS)
    return round_resolution(get_variant(config.base).resolution * resolution)


def _train_config(config: SearchConfig, candidate, base_size: int) -> TrainConfig:
    alpha, beta, gamma = candidate
    # the baseline (B0, or B0 shrunk by base_phi with the paper's coefficients), then
    # the candidate's own scaling on top
    base_depth, base_width, _ = compound_coefficients(config.base_phi, *PAPER_COEFFICIENTS)
    depth, width, resolution = compound_coefficients(config.phi, alpha, beta, gamma)
    return TrainConfig(
        data=config.data, out=f"{config.out}/candidates/{_tag(candidate)}", model=config.base,
        weights=None, depth_coefficient=base_depth * depth, width_coefficient=base_width * width,
        image_size=round_resolution(base_size * resolution),
        val_data=config.val_data or (None if config.val_split else config.data),
        val_split=config.val_split, strategy=config.strategy, epochs=config.epochs,
        batch=config.batch, steps_per_epoch=config.steps_per_epoch,
        learning_rate=config.learning_rate, warmup_epochs=config.warmup_epochs, ema=config.ema,
        jit_compile=config.jit_compile, seed=config.seed, verbose=config.verbose,
    )


def _finished(train_config: TrainConfig) -> dict | None:
    path = f"{train_config.out}/summary.json"
    if not exists(path):
        return None
    summary = json.loads(read_bytes(path))
    return summary if summary.get("final_step") == summary.get("total_steps") else None


def _row(candidate, summary: dict) -> dict:
    alpha, beta, gamma = candidate
    scores = summary.get("final_eval", {})
    return {"alpha": alpha, "beta": beta, "gamma": gamma,
            "flops_factor": round(flops_multiplier(alpha, beta, gamma), 4),
            "model": summary["model"], "image_size": summary["image_size"],
            "params": summary["params"], "macs": summary["macs"],
            "accuracy": scores.get("accuracy"), "loss": scores.get("loss"),
            "train_seconds": summary["train_seconds"], "steps": summary["final_step"]}


def _winner(rows: list[dict]) -> dict:
    def score(row):  # a diverged candidate (NaN) never wins
        accuracy = row["accuracy"]
        return (accuracy if accuracy is not None and math.isfinite(accuracy) else -1.0,
                -row["macs"])

    return max(rows, key=score)


def _markdown(config: SearchConfig, rows: list[dict], winner: dict, evaluated_on: str) -> str:
    lines = [(f"Compound-scaling search: base {config.base} (base_phi {config.base_phi:g}), "
             f"phi {config.phi:g}, {len(rows)} candidate(s), {config.epochs} epoch(s) each; "
             f"accuracy on {evaluated_on}."), "",
             ("| alpha | beta | gamma | a*b^2*g^2 | px | params (M) | MACs (M) | accuracy | "
             "train s |"),
             "|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: (r is not winner, r["macs"])):
        mark = " **winner**" if r is winner else ""
        lines.append(f"| {r['alpha']:.2f} | {r['beta']:.2f} | {r['gamma']:.2f} | "
                     f"{r['flops_factor']:.3f} | {r['image_size']} | {r['params'] / 1e6:.2f} | "
                     f"{r['macs'] / 1e6:.1f} | {r['accuracy']:.3f}{mark} | "
                     f"{r['train_seconds']:.1f} |")
    return "\n".join(lines) + "\n"


def _plot(rows: list[dict], winner: dict, path: str, title: str) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        logging.warning("matplotlib is not installed (pip install keras-effnet[plots]): no %s",
                        path)
        return False
    figure, axes = plt.subplots(figsize=(7, 4.5))
    for r in rows:
        best = r is winner
        axes.scatter(r["macs"] / 1e6, r["accuracy"], s=60 if best else 30,
                     color="tab:red" if best else "tab:blue", zorder=3)
        axes.annotate(f"{r['alpha']:.2f}/{r['beta']:.2f}/{r['gamma']:.2f}",
                      (r["macs"] / 1e6, r["accuracy"]), fontsize=7, xytext=(4, 3),
                      textcoords="offset points")
    axes.set_xlabel("MACs (millions, at the candidate's resolution)")
    axes.set_ylabel("top-1 accuracy")
    axes.set_title(title, fontsize=9)
    axes.grid(alpha=0.3)
    figure.text(0.01, 0.01, "labels: alpha/beta/gamma; red: the winner", fontsize=7)
    figure.tight_layout()
    png = io.BytesIO()
    figure.savefig(png, format="png", dpi=120)
    plt.close(figure)
    write_bytes(path, png.getvalue())
    return True


def search(config: SearchConfig) -> dict:
    """Train every candidate (or resume), then write and return the table and the winner."""
    import keras

    from keras_effnet.training.data import scan_folder

    if config.phi <= 0:
        raise ValueError(f"phi must be > 0 (the paper fixes phi=1), got {config.phi}")
    scan_folder(config.data)  # a missing or empty folder fails before any model is built
    if config.val_data:
        scan_folder(config.val_data)
    base_size = baseline_size(config)
    candidates = _candidates(config)
    evaluated_on = config.val_data or (f"{config.val_split:.0%} held out of {config.data}"
                                       if config.val_split else
                                       f"the training images ({config.data}; no held-out set "
                                       "given: a smoke figure, not a generalisation estimate)")
    rows = []
    for number, candidate in enumerate(candidates, 1):
        train_config = _train_config(config, candidate, base_size)
        summary = _finished(train_config)
        state = "done before, reused" if summary else "training"
        print(f"[{number}/{len(candidates)}] alpha={candidate[0]:.2f} beta={candidate[1]:.2f} "
              f"gamma={candidate[2]:.2f} ({train_config.image_size} px): {state}", flush=True)
        if summary is None:
            keras.backend.clear_session()  # the previous candidate's graph and variables
            _, summary = train(train_config)
        rows.append(_row(candidate, summary))
    winner = _winner(rows)
    table = _markdown(config, rows, winner, evaluated_on)
    result = {"config": dataclasses.asdict(config),
              "evaluated_on": evaluated_on, "candidates": rows, "winner": winner,
              "table": table}
    makedirs(config.out)
    write_text(f"{config.out}/search.md", table)
    write_json(f"{config.out}/search.json", result)
    title = (f"alpha/beta/gamma search, {config.base} base_phi={config.base_phi:g}, "
             f"phi={config.phi:g}")
    if _plot(rows, winner, f"{config.out}/search.png", title):
        result["plot"] = f"{config.out}/search.png"
    return result
