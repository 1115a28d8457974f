"""The pieces of the artifact stage that need no server: snapshots on a real filesystem and
the upload journal read back after a crash."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from aidp_metrics._queue.journal import RunDescriptor
from aidp_metrics._uploads import snapshot
from aidp_metrics._uploads.ledger import FAILED, PENDING, UPLOADED, Entry, UploadLedger


def test_a_copy_keeps_the_logged_bytes_through_a_rewrite_in_place(tmp_path: Path) -> None:
    source = tmp_path / "last.pt"
    source.write_bytes(b"epoch 1")
    how = snapshot.take(source, tmp_path / "snap", "copy")
    with open(source, "r+b") as again:  # what torch.save and Keras do to a fixed path
        again.write(b"epoch 2")
    assert how in ("reflink", "copy")
    assert (tmp_path / "snap").read_bytes() == b"epoch 1"


def test_a_hard_link_keeps_the_bytes_through_rename_and_delete_but_not_a_rewrite(
    tmp_path: Path,
) -> None:
    renamed, deleted, rewritten = (tmp_path / n for n in ("renamed", "deleted", "rewritten"))
    for path in (renamed, deleted, rewritten):
        path.write_bytes(b"logged")
        assert snapshot.take(path, tmp_path / f"{path.name}.snap", "link") == "link"
    (tmp_path / "new").write_bytes(b"next")
    os.replace(tmp_path / "new", renamed)  # fsspec's commit of Lightning's checkpoint
    deleted.unlink()  # rotation
    with open(rewritten, "r+b") as again:
        again.write(b"LOGGED")
    assert (tmp_path / "renamed.snap").read_bytes() == b"logged"
    assert (tmp_path / "deleted.snap").read_bytes() == b"logged"
    assert (tmp_path / "rewritten.snap").read_bytes() == b"LOGGED"  # why "copy" is the default


def test_a_symlink_is_snapshotted_as_the_file_it_points_to(tmp_path: Path) -> None:
    (tmp_path / "epoch=3.ckpt").write_bytes(b"weights")
    (tmp_path / "last.ckpt").symlink_to("epoch=3.ckpt")  # Lightning's save_last="link"
    snapshot.take(tmp_path / "last.ckpt", tmp_path / "snap", "link")
    assert not (tmp_path / "snap").is_symlink()
    assert (tmp_path / "snap").read_bytes() == b"weights"


def test_a_link_across_filesystems_falls_back_to_a_copy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def cross_device(src: str, dst: object) -> None:
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(os, "link", cross_device)
    (tmp_path / "a").write_bytes(b"data" * 1000)
    assert snapshot.take(tmp_path / "a", tmp_path / "snap", "link") in ("reflink", "copy")
    assert (tmp_path / "snap").read_bytes() == b"data" * 1000


def test_the_journal_read_back_after_a_crash_keeps_every_whole_line(tmp_path: Path) -> None:
    ledger = UploadLedger.create(tmp_path, RunDescriptor("local-x", run_id="abc"))
    entries = []
    for name in ("a.bin", "b.bin", "c.bin"):
        number, target = ledger.new_entry("ckpt", name)
        target.write_bytes(name.encode())
        entry = Entry(number, "ckpt", name, len(name), "copy", mtime=target.stat().st_mtime_ns)
        ledger.record(entry)
        entries.append(entry)
    ledger.settle(entries[0].id, UPLOADED)
    ledger.settle(entries[1].id, FAILED, "refused: HTTP 400")
    ledger.close()
    with open(ledger.directory / "uploads.log", "ab") as log:
        log.write(b'0badc0de {"op":"uploaded","id":2')  # torn by kill -9 mid-write

    again, read = UploadLedger.open(ledger.directory)
    assert again.descriptor.run_id == "abc"
    assert [(e.artifact_path, e.state) for e in read] == [
        ("ckpt/a.bin", UPLOADED),
        ("ckpt/b.bin", FAILED),
        ("ckpt/c.bin", PENDING),
    ]
    assert read[1].reason == "refused: HTTP 400"
    assert len(again.problems) == 1
    assert again.snapshot_path(read[2]).read_bytes() == b"c.bin"  # settled ones are gone
    assert not again.snapshot_path(read[0]).exists()
    number, _ = again.new_entry(None, "d.bin")
    assert number == 3
