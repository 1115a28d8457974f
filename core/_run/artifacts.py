"""`Run`'s artifact methods (docs/artifacts.md): each call snapshots the file (or writes the
figure, dict or text) into the run's spool and journals it before it returns; the run's upload
stage (`aidp_metrics._uploads`) uploads it in the background."""

from __future__ import annotations

import os
from typing import Any

from aidp_metrics._uploads.snapshot import SnapshotMode
from aidp_metrics._uploads.stage import UploadStage

_Path = str | os.PathLike[str]


class ArtifactMethods:
    """Mixed into `Run`, which provides `_uploads()`: the run's upload stage (None in a
    forked child that did not take the run over), reopening an ended run first."""

    def _uploads(self) -> UploadStage | None:
        raise NotImplementedError

    def log_artifact(
        self,
        local_path: _Path,
        artifact_path: str | None = None,
        *,
        snapshot: SnapshotMode = "copy",
    ) -> None:
        """Upload the file into the run's `artifact_path` directory as it is now.
        `snapshot="link"`: a hard link instead of a copy, for files never rewritten in place."""
        stage = self._uploads()
        if stage is not None:
            stage.log_file(local_path, artifact_path, snapshot)

    def log_artifacts(
        self, local_dir: _Path, artifact_path: str | None = None, *, snapshot: SnapshotMode = "copy"
    ) -> None:
        """Every file under `local_dir`, at its relative path under `artifact_path`."""
        stage = self._uploads()
        if stage is not None:
            stage.log_dir(local_dir, artifact_path, snapshot)

    def log_figure(self, figure: Any, artifact_file: str, **save_kwargs: Any) -> None:
        """A matplotlib or plotly figure, saved now as `artifact_file` (e.g. "plots/loss.png")."""
        stage = self._uploads()
        if stage is not None:
            stage.log_figure(figure, artifact_file, save_kwargs)

    def log_dict(self, dictionary: Any, artifact_file: str) -> None:
        """YAML for a `.yaml`/`.yml` `artifact_file`, else JSON."""
        stage = self._uploads()
        if stage is not None:
            stage.log_dict(dictionary, artifact_file)

    def log_text(self, text: str, artifact_file: str) -> None:
        stage = self._uploads()
        if stage is not None:
            stage.log_text(text, artifact_file)
