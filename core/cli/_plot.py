"""`aidp-metrics plot`: metric curves against step, as a PNG (matplotlib) or in the terminal.

The terminal chart is drawn here with plain characters, so it needs no extra package.
System metrics (`system/...` keys: percentages, megabytes) get a panel of their own below
the training curves, so that a loss of 0.1 is not flattened by a CPU at 80 %.
"""

from __future__ import annotations

import argparse
import math
import shutil
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from aidp_metrics._errors import ConfigurationError

from ._connection import client_for
from ._history import histories
from ._parser import EXIT_OK, Subparsers, add_command, add_keys_option, add_run_id_option
from ._terminal import symbols

Series = Mapping[str, Sequence[tuple[int, float]]]  # key -> [(step, value), ...]

MARKERS = "*+ox#@%&"
PNG_INSTALL_HINT = 'writing a PNG needs matplotlib: pip install "aidp-metrics[plot]"'
SYSTEM_PREFIX = "system/"


def register(subparsers: Subparsers) -> None:
    parser = add_command(
        subparsers,
        "plot",
        _plot,
        "plot metric curves against step (PNG or terminal)",
        "Plot the curves of a run's metrics against step: into a PNG with -o (needs\n"
        'matplotlib: pip install "aidp-metrics[plot]"), else as a chart in the terminal.',
    )
    add_run_id_option(parser)
    add_keys_option(parser)
    parser.add_argument("-o", "--output", metavar="FILE.png", type=Path, help="write a PNG")
    parser.add_argument(
        "--width", type=int, help="terminal chart width in characters (default: terminal's)"
    )
    parser.add_argument(
        "--height", type=int, default=16, help="terminal chart height in rows (default 16)"
    )


def _plot(args: argparse.Namespace) -> int:
    with client_for(args) as client:
        by_key = histories(client, args.run_id, args.key)
    if not by_key:
        raise ConfigurationError(f"run {args.run_id} has no metrics to plot")
    series = {key: [(m.step, m.value) for m in points] for key, points in by_key.items()}
    if args.output is not None:
        write_png(series, args.output, title=f"run {args.run_id}")
        print(f"wrote {args.output}", file=sys.stderr)
        return EXIT_OK
    width = args.width or min(shutil.get_terminal_size((80, 24)).columns, 120) - 1
    unicode = bool(symbols(sys.stdout)["unicode"])
    sys.stdout.write(render_chart(series, width=width, height=args.height, unicode=unicode))
    return EXIT_OK


def split_system(series: Series) -> tuple[Series, Series]:
    """(training curves, system metrics): keys starting with `system/` go to the second."""
    training = {k: v for k, v in series.items() if not k.startswith(SYSTEM_PREFIX)}
    system = {k: v for k, v in series.items() if k.startswith(SYSTEM_PREFIX)}
    return training, system


def write_png(series: Series, path: Path, *, title: str | None = None) -> None:
    """Draw every series against step into a PNG at `path` (needs matplotlib); system
    metrics in a second panel under the training curves, on the same steps."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise ConfigurationError(PNG_INSTALL_HINT) from None
    panels = [part for part in split_system(series) if part] or [series]
    # A bare Figure uses the Agg canvas for savefig: no pyplot, no GUI backend.
    figure = Figure(figsize=(8, 4.5 if len(panels) == 1 else 7), layout="constrained")
    all_axes = figure.subplots(len(panels), 1, sharex=True, squeeze=False)[:, 0]
    for axes, panel in zip(all_axes, panels, strict=True):
        for key, points in panel.items():
            finite = [(s, v) for s, v in points if math.isfinite(v)]
            axes.plot(
                [s for s, _ in finite],
                [v for _, v in finite],
                label=key,
                marker="." if len(finite) <= 50 else None,
            )
        axes.set_ylabel("value")
        axes.grid(True, alpha=0.3)
        if panel:
            axes.legend()
    all_axes[-1].set_xlabel("step")
    if title:
        all_axes[0].set_title(title)
    figure.savefig(path, format="png", dpi=120)


def render_chart(series: Series, *, width: int = 72, height: int = 16, unicode: bool = True) -> str:
    """A character chart of every series against step, with axes and a legend; system
    metrics in a second chart under the first.

    Non-finite values are left out (and counted in the legend). Between two points of a
    series the chart interpolates column by column, so sparse curves read as lines.
    """
    training, system = split_system(series)
    if training and system:
        return "\n".join(_chart(part, width, height, unicode) for part in (training, system))
    return _chart(series, width, height, unicode)


def _chart(series: Series, width: int, height: int, unicode: bool) -> str:
    finite = {
        key: sorted((s, v) for s, v in points if math.isfinite(v)) for key, points in series.items()
    }
    all_points = [p for points in finite.values() for p in points]
    legend = _legend(series, finite)
    if not all_points:
        return "no finite points to plot\n" + legend
    x_min = min(s for s, _ in all_points)
    x_max = max(s for s, _ in all_points)
    y_min = min(v for _, v in all_points)
    y_max = max(v for _, v in all_points)
    if y_min == y_max:
        pad = abs(y_min) * 0.05 or 0.5
        y_min, y_max = y_min - pad, y_max + pad

    labels = [_number(y_max), _number((y_min + y_max) / 2), _number(y_min)]
    label_width = max(len(label) for label in labels)
    plot_width = max(10, width - label_width - 2)
    plot_height = max(3, height)
    grid = [[" "] * plot_width for _ in range(plot_height)]

    def column(step: float) -> int:
        if x_max == x_min:
            return plot_width // 2
        return round((step - x_min) / (x_max - x_min) * (plot_width - 1))

    def row(value: float) -> int:
        return round((y_max - value) / (y_max - y_min) * (plot_height - 1))

    for index, points in enumerate(finite.values()):
        marker = MARKERS[index % len(MARKERS)]
        previous: tuple[int, float] | None = None
        for step, value in points:
            if previous is not None:
                c0, c1 = column(previous[0]), column(step)
                for c in range(c0 + 1, c1):
                    fraction = (c - c0) / (c1 - c0)
                    grid[row(previous[1] + fraction * (value - previous[1]))][c] = marker
            grid[row(value)][column(step)] = marker
            previous = (step, value)

    vertical, corner, horizontal = ("│", "└", "─") if unicode else ("|", "+", "-")
    lines = []
    label_rows = {0: labels[0], (plot_height - 1) // 2: labels[1], plot_height - 1: labels[2]}
    for r, cells in enumerate(grid):
        label = label_rows.get(r, "")
        lines.append(f"{label:>{label_width}} {vertical}{''.join(cells)}".rstrip())
    lines.append(f"{'':>{label_width}} {corner}{horizontal * plot_width}")
    left, right = str(x_min), str(x_max)
    middle = "step"
    gap = plot_width - len(left) - len(right)
    if gap >= len(middle) + 2:
        before = (gap - len(middle)) // 2
        axis = left + " " * before + middle + " " * (gap - len(middle) - before) + right
    else:
        axis = left + " " * max(1, gap) + right
    lines.append(f"{'':>{label_width}}  {axis}")
    return "\n".join(lines) + "\n" + legend


def _legend(series: Series, finite: Mapping[str, Sequence[tuple[int, float]]]) -> str:
    lines = []
    for index, (key, points) in enumerate(series.items()):
        marker = MARKERS[index % len(MARKERS)]
        kept = finite[key]
        text = f"  {marker} {key}: {len(points)} point{'s' if len(points) != 1 else ''}"
        if kept:
            step, value = kept[-1]
            text += f", last {_number(value)} at step {step}"
        dropped = len(points) - len(kept)
        if dropped:
            text += f" ({dropped} NaN/Inf not drawn)"
        lines.append(text)
    return "\n".join(lines) + ("\n" if lines else "")


def _number(value: float) -> str:
    return f"{value:.4g}"
