"""PNG figures from the benchmark results (never drawn by hand).

    python benchmarks/plots.py [--results benchmarks/results]

  family_params.png     params vs top-1 (the paper's Figure 1): B0-B7 and Lite0-4
  family_macs.png       MACs vs top-1 (the paper's Figure 5)
  latency_top1.png      1-thread batch-1 latency vs top-1 per runtime (latency.json)
  formats_lite0.png     latency vs measured top-1 per export format (export_matrix.json)
  runtimes.png          every runtime's latency per model and setting (runtimes.json)

Params, MACs and latencies are ours, measured; top-1 on the first three is the
published ImageNet figure (paper Table 2, tensorflow/tpu's Lite README, ResNets
from the paper's Table 2), and the axes say so. The formats plot uses the top-1
measured by export_matrix on its photos. A missing results file skips its
figures with a message; the others are still drawn.
"""

from __future__ import annotations

import json
import pathlib
import sys

import _bench
from absl import app, flags

from keras_effnet.files import atomic_output

FLAGS = flags.FLAGS
flags.DEFINE_string("results", str(_bench.RESULTS), "folder with the JSON results; PNGs go here")

# published ImageNet top-1 of the peers in latency.json (paper Table 2)
PEER_TOP1 = {"keras.applications.ResNet50": 76.0, "keras.applications.ResNet152": 77.8}
FAMILIES = (("EfficientNetB", "B0-B7", "tab:blue", "o"),
            ("EfficientNetLite", "Lite0-4", "tab:orange", "s"))
RUNTIME_STYLE = {"keras": ("Keras (TF runtime)", "tab:blue", "o"),
                 "float32": ("TFLite float32", "tab:green", "s"),
                 "int8": ("TFLite int8", "tab:red", "^")}


def _load(folder: pathlib.Path, name: str):
    path = folder / f"{name}.json"
    if not path.exists():
        print(f"{path} is missing: run benchmarks/{name}.py first; skipping its figures")
        return None
    return json.loads(path.read_text())


def _short(model: str) -> str:
    return model.replace("ours ", "").replace("EfficientNet", "").replace(
        "keras.applications.", "k.a.")


def _save(figure, path: pathlib.Path) -> None:
    with atomic_output(path, overwrite=True) as partial:
        figure.savefig(partial, format="png", dpi=110)
    print(f"wrote {path}")


def family(table: dict, folder: pathlib.Path, plt) -> list[pathlib.Path]:
    written = []
    for key, title, unit, scale, name, paper_figure in (
            ("params", "params", "parameters (millions)", 1e6, "family_params.png", "Figure 1"),
            ("macs", "MACs", "multiply-adds (billions)", 1e9, "family_macs.png", "Figure 5")):
        figure, axis = plt.subplots(figsize=(7, 5))
        for prefix, label, colour, marker in FAMILIES:
            rows = [r for r in table["rows"] if r["model"].startswith(prefix)
                    and r.get("paper_top1")]
            xs = [r[key] / scale for r in rows]
            ys = [r["paper_top1"] for r in rows]
            axis.plot(xs, ys, marker=marker, color=colour, label=label)
            for r, x, y in zip(rows, xs, ys):
                axis.annotate(_short(r["model"]), (x, y), textcoords="offset points",
                              xytext=(4, -10), fontsize=8)
        axis.set_xscale("log")
        axis.set_xlabel(f"{unit}, measured by keras_effnet.profile (log scale)")
        axis.set_ylabel("ImageNet top-1 % (published)")
        axis.set_title(f"EfficientNet family: {title} vs top-1 (cf. paper {paper_figure})")
        axis.grid(alpha=0.3)
        axis.legend()
        figure.tight_layout()
        path = folder / name
        _save(figure, path)
        plt.close(figure)
        written.append(path)
    return written


def _published_top1(model: str, table: dict | None) -> float | None:
    if model in PEER_TOP1:
        return PEER_TOP1[model]
    name = model.replace("ours ", "")
    for row in (table or {}).get("rows", []):
        if row["model"] == name:
            return row.get("paper_top1")
    return None


def latency(data: dict, table: dict | None, folder: pathlib.Path, plt) -> list[pathlib.Path]:
    """One point per (model, runtime); ours filled, keras.applications' ResNets
    hollow, a model's runtimes joined by a line and the model named once, beside
    its fastest point. keras.applications' EfficientNets are left out: same
    architecture and published top-1 as ours, so they would sit on our points
    (their latency ratios are in latency.md)."""
    figure, axis = plt.subplots(figsize=(7, 5))
    by_model = {}
    for row in data["models"]:
        top1 = _published_top1(row["model"], table)
        same_as_ours = row["model"].startswith("keras.applications.EfficientNet")
        if top1 is not None and row["runtime"] in RUNTIME_STYLE and not same_as_ours:
            by_model.setdefault(row["model"], []).append((row["median_ms"], top1, row["runtime"]))
    for runtime, (label, colour, marker) in RUNTIME_STYLE.items():
        for peer in (False, True):
            points = [(x, y) for model, rows in by_model.items()
                      if model.startswith("keras.applications.") == peer
                      for x, y, r in rows if r == runtime]
            if points:
                axis.scatter(*zip(*points), marker=marker, s=42, linewidths=1.2,
                             color=colour, facecolors="none" if peer else colour,
                             label=f"{label}, keras.applications" if peer else label)
    for model, rows in sorted(by_model.items()):
        rows.sort()
        axis.plot([r[0] for r in rows], [r[1] for r in rows], color="grey", lw=0.6,
                  alpha=0.5, zorder=0)
        peer = model.startswith("keras.applications.")
        x, y, _ = rows[0]
        axis.annotate(_short(model).replace("k.a.", "") + (" (keras.applications)" if peer
                                                            else ""),
                      (x, y), textcoords="offset points", xytext=(-6, 6), ha="right",
                      fontsize=8)
    axis.set_xscale("log")
    axis.set_xlabel(f"latency, ms (batch 1, {data['threads']} thread, median of {data['runs']}; "
                    "log scale)")
    axis.set_ylabel("ImageNet top-1 % (published)")
    axis.set_title("Latency vs top-1 (cf. paper Table 4)")
    axis.grid(alpha=0.3)
    axis.margins(x=0.15, y=0.08)
    axis.legend(fontsize=7, loc="lower right")
    figure.tight_layout()
    path = folder / "latency_top1.png"
    _save(figure, path)
    plt.close(figure)
    return [path]


def formats(matrix: dict, folder: pathlib.Path, plt) -> list[pathlib.Path]:
    written = []
    for name, result in matrix["models"].items():
        rows = [r for r in result["rows"] if r["se"] == "keep" and r["latency_ms"] is not None
                and r["top1_accuracy"] is not None]
        if not rows or not result["weights"].startswith("ImageNet"):
            continue  # a proxy's accuracy means nothing
        figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4.8))
        for r in rows:
            label = f"{r['artifact']} ({r['size_bytes'] / 1e6:.1f} MB)"
            sqnr = r["sqnr_db"] if not isinstance(r["sqnr_db"], str) else float("nan")
            left.scatter(r["latency_ms"], 100 * r["top1_accuracy"], label=label, s=40)
            right.scatter(r["latency_ms"], sqnr, label=label, s=40)
        keras_top1 = 100 * rows[0]["keras_top1_accuracy"]
        left.axhline(keras_top1, color="grey", linestyle="--", label=f"Keras {keras_top1:.1f}%")
        left.set_ylim(keras_top1 - 5, min(100, keras_top1 + 3))
        left.set_ylabel(f"top-1 % on {result['count']} photos of "
                        f"{pathlib.Path(result['images']).name}")
        right.set_ylabel("logit SQNR vs the Keras model, dB")
        for axis in (left, right):
            axis.set_xlabel("latency, ms (batch 1, 1 thread, median)")
            axis.grid(alpha=0.3)
        right.legend(fontsize=8, loc="best")
        figure.suptitle(f"{name}: every export format, measured by export_matrix")
        figure.tight_layout()
        path = folder / f"formats_{name}.png"
        _save(figure, path)
        plt.close(figure)
        written.append(path)
    return written


def runtimes(data: dict, folder: pathlib.Path, plt) -> list[pathlib.Path]:
    """Horizontal bars, one panel per (setting, model): each runner's median latency with
    its p10-p90 spread; ours in LiteRT green, ours elsewhere blue, peers grey."""
    from matplotlib import ticker

    panels = [(setting, result, model, row) for setting, result in data["settings"].items()
              for model, row in result["models"].items()]
    columns = len({model for _, _, model, _ in panels})
    rows = -(-len(panels) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(6.5 * columns, 3.6 * rows),
                                squeeze=False)
    for axis, (setting, result, model, row) in zip(axes.flat, panels):
        names = list(row["runners"])
        stats = [row["runners"][n] for n in names]
        medians = [r["median_ms"] for r in stats]
        spread = [[m - r["p10_ms"] for m, r in zip(medians, stats)],
                  [r["p90_ms"] - m for m, r in zip(medians, stats)]]
        colours = ["tab:green" if n.startswith("LiteRT") else
                   "tab:blue" if "(ours)" in n else "tab:grey" for n in names]
        axis.barh(range(len(names)), medians, xerr=spread, color=colours, alpha=0.85)
        axis.set_yticks(range(len(names)), [n.replace(" (PyTorch peer, torch export)",
                                                      " (peer's ONNX)") for n in names],
                        fontsize=7)
        axis.invert_yaxis()
        axis.set_xscale("log")
        # plain numbers at 1-2-5 steps: matplotlib's default writes 3x10^1 and 4x10^1
        # on top of each other
        plain = ticker.FuncFormatter(lambda value, _: f"{value:g}")
        axis.xaxis.set_major_formatter(plain)
        axis.xaxis.set_minor_locator(ticker.LogLocator(subs=(2.0, 5.0)))
        axis.xaxis.set_minor_formatter(plain)
        axis.tick_params(axis="x", which="both", labelsize=7)
        axis.set_xlabel("ms, median (p10-p90), log scale", fontsize=8)
        axis.set_title(f"{model}: batch {result['batch']}, {result['threads']} thread(s)",
                       fontsize=9)
        axis.grid(alpha=0.3, axis="x")
    for axis in list(axes.flat)[len(panels):]:
        axis.set_visible(False)
    figure.suptitle("The same EfficientNet in every runtime (benchmarks/runtimes.py)")
    figure.tight_layout()
    path = folder / "runtimes.png"
    _save(figure, path)
    plt.close(figure)
    return [path]


def main(argv):
    del argv
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    folder = pathlib.Path(FLAGS.results)
    written = []
    table = _load(folder, "model_table")
    if table:
        written += family(table, folder, plt)
    latency_data = _load(folder, "latency")
    if latency_data:
        written += latency(latency_data, table, folder, plt)
    matrix = _load(folder, "export_matrix")
    if matrix:
        written += formats(matrix, folder, plt)
    runtime_data = _load(folder, "runtimes")
    if runtime_data:
        written += runtimes(runtime_data, folder, plt)
    print(f"{len(written)} figure(s) written")
    return 0 if written else 1


if __name__ == "__main__":
    sys.exit(app.run(main))
