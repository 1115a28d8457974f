"""What `log_figure`, `log_dict` and `log_text` write, as MLflow's client writes it.

Written on the caller's thread, straight into the run's spool (the object may change right
after the call; the file is the snapshot). Matplotlib and plotly are imported only when the
figure is one of theirs; a plotly figure goes to `.html` (`write_html`, plotly.js from its
CDN as MLflow does) or to an image (`write_image`, which needs kaleido).
"""

from __future__ import annotations

import json
import posixpath
import sys
from pathlib import Path
from typing import Any

PLOTLY_IMAGE_SUFFIXES = (".png", ".jpeg", ".webp", ".svg", ".pdf")


def write_figure(figure: Any, path: Path, save_kwargs: dict[str, Any]) -> None:
    if "matplotlib" in sys.modules and _is_matplotlib(figure):
        figure.savefig(path, **save_kwargs)
        return
    if "plotly" in sys.modules and _is_plotly(figure):
        suffix = path.suffix
        if suffix == ".html":
            options = {"include_plotlyjs": "cdn", "auto_open": False, **save_kwargs}
            figure.write_html(path, **options)
        elif suffix in PLOTLY_IMAGE_SUFFIXES:
            figure.write_image(path, **save_kwargs)
        else:
            raise TypeError(f"unsupported file extension for a plotly figure: {suffix!r}")
        return
    raise TypeError(f"log_figure takes a matplotlib or plotly figure, not {type(figure).__name__}")


def write_dict(dictionary: Any, path: Path) -> None:
    """YAML for `.yaml` / `.yml` (needs PyYAML, which mlflow-skinny brings), else JSON
    (values JSON cannot hold as their `str()`), as MLflow's `log_dict`."""
    with open(path, "w", encoding="utf-8") as out:
        if path.suffix in (".yml", ".yaml"):
            import yaml

            yaml.dump(dictionary, out, indent=2, default_flow_style=False)
        else:
            json.dump(dictionary, out, indent=2, default=str)


def write_text(text: str, path: Path) -> None:
    with open(path, "w", encoding="utf-8") as out:
        out.write(text)


def split_artifact_file(artifact_file: str) -> tuple[str | None, str]:
    """`dir/file.png` -> ("dir", "file.png"), as MLflow's client splits it."""
    norm = posixpath.normpath(str(artifact_file))
    directory = posixpath.dirname(norm)
    return directory or None, posixpath.basename(norm)


def _is_matplotlib(figure: Any) -> bool:
    import matplotlib.figure

    return isinstance(figure, matplotlib.figure.Figure)


def _is_plotly(figure: Any) -> bool:
    import plotly.graph_objects

    return isinstance(figure, plotly.graph_objects.Figure)
