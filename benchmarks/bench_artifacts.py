"""Artifact benchmark: what an upload costs the training thread, against a real MLflow server.

    python -m benchmarks.bench_artifacts [--quick | --smoke] [--tracking-uri URL]
        [--json out.json]

Against a local `mlflow server` with proxied artifacts (uploads go through its REST API):

1. Snapshot cost: `snapshot.take` of files of 1 MB, 100 MB and the benchmark's size, by
   each method this filesystem offers (a hard link; a reflink where `FICLONE` works, else
   a kernel copy): what `log_artifact` does on the caller's thread before it returns.
2. `log_artifact` of a large file (1 GB at full size) returns to the caller in under 1 % of
   its upload time (goal), with the default `snapshot="copy"` and with `snapshot="link"`;
   the upload time runs from the call's return until the server has the file.
3. The training thread's cost per step while such an upload is in flight, against no upload:
   runs of a fixed loop (pure-Python work per step, `log_metrics` of 3 keys every 20 steps)
   for a fixed time, with and without an upload started right before it, interleaved (the
   order alternates every pair, so drift hits both alike). Reported: the training thread's
   CPU time per step (`time.thread_time`) and wall time per step, medians with min-max;
   goal: the median with the upload within noise, i.e. no higher than the slowest run
   without it.

`--dir PATH` puts the file and the spool on another filesystem (the default `snapshot="copy"`
is a reflink where it can be: Btrfs, XFS with reflink, ...).

Sizes: full is a 1 GB file, 3 uploads per snapshot mode and 5 pairs of runs; `--quick`
256 MB, 2 and 2; `--smoke` (the test suite's end-to-end check, numbers meaningless) 16 MB,
1 and 1. `--tracking-uri URL` uploads to a running server (with proxied artifacts) instead of
starting one. Nothing here fails on a goal.
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from aidp_metrics._run.run import Run
from aidp_metrics._uploads import snapshot
from aidp_metrics._uploads.stage import uploader

from ._common import (
    MB,
    BenchServer,
    Repeated,
    Row,
    add_common_options,
    fmt_seconds,
    log,
    machine_info,
    print_grid,
    print_header,
    print_table,
    server_line,
    size_name,
    size_suffix,
    tracking_server,
    write_json,
)

EXPERIMENT = "aidp-bench-artifacts"
KEYS = ("train/loss", "train/accuracy", "train/lr")
LOG_EVERY = 20
WORK = 1_000  # pure-Python operations per step (~40-100 µs)
GOAL_SHARE = 0.01  # log_artifact's return: under 1 % of the upload time


@dataclass(frozen=True)
class Sizes:
    file_mb: int
    uploads: int  # per snapshot mode (section 2)
    pairs: int  # runs with and without an upload (section 3)


SIZES = {
    "full": Sizes(file_mb=1024, uploads=3, pairs=5),
    "quick": Sizes(file_mb=256, uploads=2, pairs=2),
    "smoke": Sizes(file_mb=16, uploads=1, pairs=1),
}


def _filesystem(path: str) -> str:
    """The type of the filesystem holding `path` (Linux: /proc/mounts), or '?'."""
    best, kind = "", "?"
    target = os.path.realpath(path)
    try:
        with open("/proc/mounts", encoding="utf-8") as mounts:
            for line in mounts:
                fields = line.split()
                mount = fields[1]
                if (target == mount or target.startswith(mount.rstrip("/") + "/")) and len(
                    mount
                ) > len(best):
                    best, kind = mount, fields[2]
    except OSError:
        pass
    return kind


def _make_file(path: Path, megabytes: int) -> None:
    block = os.urandom(MB)
    with open(path, "wb") as out:
        for index in range(megabytes):
            out.write(index.to_bytes(8, "little") + block[8:])  # no two blocks alike


# -- 1. snapshot cost --------------------------------------------------------------------


def bench_snapshots(folder: Path, big: Path, sizes: Sizes) -> list[dict[str, Any]]:
    """Each method's time per file size on this filesystem (3 tries, the median)."""
    results = []
    for megabytes in sorted({1, 100, sizes.file_mb}):
        source = big if megabytes == sizes.file_mb else folder / f"source-{megabytes}"
        if source != big:
            _make_file(source, megabytes)
        for mode in snapshot.MODES:
            times, how = [], ""
            for attempt in range(3):
                target = folder / f"snap-{mode}-{megabytes}-{attempt}"
                started = time.perf_counter()
                how = snapshot.take(source, target, mode)
                times.append(time.perf_counter() - started)
                target.unlink()
            results.append(
                {
                    "megabytes": megabytes,
                    "mode": mode,
                    "how": how,
                    "seconds": statistics.median(times),
                }
            )
        if source != big:
            source.unlink()
    return results


# -- 2. log_artifact's return vs the upload -----------------------------------------------


def _artifact_size(server: BenchServer, run_id: str, path: str) -> int | None:
    response = httpx.get(
        f"{server.url}/api/2.0/mlflow/artifacts/list", params={"run_id": run_id}, timeout=60
    )
    response.raise_for_status()
    for entry in response.json().get("files", []):
        if entry["path"] == path:
            return int(entry["file_size"])
    return None


def _drop_artifacts(server: BenchServer, run_id: str) -> None:
    """Delete the run's (large) artifacts from the server, so disk use stays bounded."""
    response = httpx.get(
        f"{server.url}/api/2.0/mlflow/runs/get", params={"run_id": run_id}, timeout=60
    )
    uri = response.json()["run"]["info"]["artifact_uri"]
    root = uri.removeprefix("mlflow-artifacts:").lstrip("/")
    httpx.delete(f"{server.url}/api/2.0/mlflow-artifacts/artifacts/{root}", timeout=120)


def _wait_uploaded(run: Run, count: int, timeout: float = 1800.0) -> float:
    started = time.perf_counter()
    while run.stats.artifacts_uploaded + run.stats.artifacts_failed < count:
        if time.perf_counter() - started > timeout:
            raise RuntimeError("the upload did not finish")
        time.sleep(0.005)
    return time.perf_counter() - started


def _one_upload(
    server: BenchServer, big: Path, mode: snapshot.SnapshotMode, spool: Path
) -> dict[str, Any]:
    run = Run.start(
        endpoint=server.url, experiment_name=EXPERIMENT, spool_dir=str(spool), run_name=mode
    )
    gc.collect()
    uploader_cpu = uploader.cpu_seconds()
    cpu, started = time.thread_time(), time.perf_counter()
    run.log_artifact(big, snapshot=mode)
    returned = time.perf_counter() - started
    cpu = time.thread_time() - cpu
    upload = _wait_uploaded(run, 1)
    uploader_cpu = uploader.cpu_seconds() - uploader_cpu
    stats = run.end()
    size = _artifact_size(server, run.run_id, big.name)
    _drop_artifacts(server, run.run_id)
    return {
        "returned": returned,
        "caller_cpu": cpu,
        "upload": upload,
        "share": returned / upload,
        "uploader_cpu_per_gb": uploader_cpu / (big.stat().st_size / 1024**3),
        "complete": stats.artifacts_uploaded == 1 and size == big.stat().st_size,
    }


def bench_returns(server: BenchServer, big: Path, sizes: Sizes, spool: Path) -> dict[str, Any]:
    measured: dict[str, list[dict[str, Any]]] = {mode: [] for mode in snapshot.MODES}
    for rep in range(sizes.uploads):
        for mode in snapshot.MODES if rep % 2 == 0 else snapshot.MODES[::-1]:
            log(f"upload {rep + 1}/{sizes.uploads}, snapshot={mode}")
            measured[mode].append(_one_upload(server, big, mode, spool))
    result: dict[str, Any] = {}
    for name, runs in measured.items():
        result[name] = {
            key: Repeated(tuple(r[key] for r in runs))
            for key in ("returned", "caller_cpu", "upload", "share", "uploader_cpu_per_gb")
        }
        result[name]["complete"] = all(r["complete"] for r in runs)
    return result


# -- 3. the training thread during an upload -----------------------------------------------


def _step_work(work: int) -> int:
    total = 0
    for i in range(work):
        total += i * i & 0xFF
    return total


def _one_loop(
    server: BenchServer, big: Path, seconds: float, upload: bool, spool: Path
) -> dict[str, Any]:
    run = Run.start(
        endpoint=server.url,
        experiment_name=EXPERIMENT,
        spool_dir=str(spool),
        run_name=f"loop-{'upload' if upload else 'none'}",
    )
    if upload:
        run.log_artifact(big, snapshot="link")
    values = [0.5 + i * 1e-4 for i in range(1000)]
    k1, k2, k3 = KEYS
    steps = 0
    gc.collect()
    gc.disable()
    try:
        cpu_start, wall_start = time.thread_time(), time.perf_counter()
        stop = wall_start + seconds
        while True:
            _step_work(WORK)
            if steps % LOG_EVERY == 0:
                v = values[steps % 1000]
                run.log_metrics({k1: v, k2: v, k3: v}, step=steps)
                if time.perf_counter() >= stop:
                    break
            steps += 1
        cpu = time.thread_time() - cpu_start
        wall = time.perf_counter() - wall_start
    finally:
        gc.enable()
    in_flight = upload and run.stats.artifacts_uploaded == 0  # still uploading at the end
    stats = run.end()
    if upload:
        _drop_artifacts(server, run.run_id)
    return {
        "cpu_per_step": cpu / steps,
        "wall_per_step": wall / steps,
        "steps": steps,
        "in_flight": in_flight,
        "complete": stats.delivered == stats.logged and stats.artifacts_pending == 0,
    }


def bench_training(
    server: BenchServer, big: Path, sizes: Sizes, seconds: float, spool: Path
) -> dict[str, Any]:
    _one_loop(server, big, min(seconds, 1.0), False, spool)  # warm-up
    measured: dict[bool, list[dict[str, Any]]] = {False: [], True: []}
    for rep in range(sizes.pairs):
        for upload in (False, True) if rep % 2 == 0 else (True, False):
            log(f"loop {rep + 1}/{sizes.pairs}, {'with' if upload else 'without'} an upload")
            measured[upload].append(_one_loop(server, big, seconds, upload, spool))

    def series(upload: bool, key: str) -> Repeated:
        return Repeated(tuple(r[key] for r in measured[upload]))

    cpu_off, cpu_on = series(False, "cpu_per_step"), series(True, "cpu_per_step")
    return {
        "seconds": seconds,
        "cpu_per_step_without": cpu_off,
        "cpu_per_step_with": cpu_on,
        "wall_per_step_without": series(False, "wall_per_step"),
        "wall_per_step_with": series(True, "wall_per_step"),
        "within_noise": cpu_on.median <= cpu_off.worst,
        "upload_in_flight_throughout": all(r["in_flight"] for r in measured[True]),
        "complete": all(r["complete"] for rs in measured.values() for r in rs),
    }


# -- the whole ------------------------------------------------------------------------------


def run_benchmark(server: BenchServer, size: str, where: str = ".") -> dict[str, Any]:
    sizes = SIZES[size]
    with tempfile.TemporaryDirectory(prefix="aidp-bench-artifacts-", dir=where) as folder:
        work = Path(folder)
        big = work / f"checkpoint-{sizes.file_mb}MB.ckpt"
        log(f"writing a {sizes.file_mb} MB file")
        _make_file(big, sizes.file_mb)
        log("snapshot cost")
        snapshots = bench_snapshots(work, big, sizes)
        log("warm-up: one small upload (imports MLflow's client on the uploader thread)")
        small = work / "warm-up.bin"
        _make_file(small, 1)
        _one_upload(server, small, "copy", work / "spool")
        returns = bench_returns(server, big, sizes, work / "spool")
        upload_seconds = returns["link"]["upload"].median
        loop_seconds = max(0.5, 0.8 * upload_seconds)  # the loop ends before the upload
        training = bench_training(server, big, sizes, loop_seconds, work / "spool")
    return {
        "sizes": sizes.__dict__,
        "snapshots": snapshots,
        "returns": returns,
        "training": training,
        "tag": uuid.uuid4().hex[:8],
    }


def build_rows(result: dict[str, Any]) -> list[Row]:
    megabytes = result["sizes"]["file_mb"]
    label = f"{megabytes / 1024:g} GB" if megabytes >= 1024 else f"{megabytes} MB"
    rows = []
    hows = {s["mode"]: s["how"] for s in result["snapshots"] if s["megabytes"] == megabytes}
    for mode, figures in result["returns"].items():
        share: Repeated = figures["share"]
        returned: Repeated = figures["returned"]
        upload: Repeated = figures["upload"]
        rows.append(
            Row(
                f"log_artifact({label}, snapshot={mode!r}: {hows.get(mode, '?')}) returns",
                f"{fmt_seconds(returned.median)} = {share.median:.2%} of its upload "
                f"({fmt_seconds(upload.median)}; {megabytes / upload.median:,.0f} MB/s)",
                f"< {GOAL_SHARE:.0%} of the upload time",
                f"{share.median / GOAL_SHARE:.2f}x of budget",
                share.median < GOAL_SHARE,
            )
        )
    link_cpu: Repeated = result["returns"]["link"]["uploader_cpu_per_gb"]
    rows.append(
        Row(
            "   uploader thread CPU per GB uploaded",
            f"{link_cpu.median:.2f} s [{link_cpu.best:.2f}-{link_cpu.worst:.2f}]",
            "-",
            "-",
        )
    )
    training = result["training"]
    cpu_off: Repeated = training["cpu_per_step_without"]
    cpu_on: Repeated = training["cpu_per_step_with"]
    wall_off: Repeated = training["wall_per_step_without"]
    wall_on: Repeated = training["wall_per_step_with"]
    rows.append(
        Row(
            f"training-thread CPU / step during a {label} upload",
            f"{fmt_seconds(cpu_on.median)} [{fmt_seconds(cpu_on.best)}-"
            f"{fmt_seconds(cpu_on.worst)}] with vs {fmt_seconds(cpu_off.median)} "
            f"[{fmt_seconds(cpu_off.best)}-{fmt_seconds(cpu_off.worst)}] without",
            "within noise: ≤ the slowest run without",
            f"{cpu_on.median / cpu_off.median:.3f}x",
            training["within_noise"],
        )
    )
    rows.append(
        Row(
            "   training-thread wall time / step",
            f"{fmt_seconds(wall_on.median)} [{fmt_seconds(wall_on.best)}-"
            f"{fmt_seconds(wall_on.worst)}] with vs {fmt_seconds(wall_off.median)} "
            f"[{fmt_seconds(wall_off.best)}-{fmt_seconds(wall_off.worst)}] without",
            "-",
            f"{wall_on.median / wall_off.median:.3f}x",
        )
    )
    complete = training["complete"] and all(f["complete"] for f in result["returns"].values())
    rows.append(
        Row("completeness (sizes on the server, metrics)", str(complete), "True", "-", complete)
    )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    add_common_options(
        parser, quick="a 256 MB file, 2 uploads, 2 pairs", smoke="a 16 MB file, once (a test)"
    )
    parser.add_argument(
        "--dir",
        default=".",
        metavar="PATH",
        help="where the test file and the spool go (default: here); its filesystem decides "
        "whether snapshot='copy' is a reflink",
    )
    args = parser.parse_args(argv)
    size = size_name(args)
    info = machine_info()
    print_header(
        "aidp-metrics artifact benchmark" + size_suffix(size),
        info,
        [
            server_line(args.tracking_uri) + ", proxied artifacts",
            f"files    in {os.path.abspath(args.dir)} ({_filesystem(args.dir)})",
            "note     numbers from one run on a possibly shared machine are noisy",
        ],
    )
    with tracking_server(args.tracking_uri) as server:
        result = run_benchmark(server, size, args.dir)
    print_grid(
        ("file", "mode", "made as", "time", "throughput"),
        [
            (
                f"{s['megabytes']} MB",
                s["mode"],
                s["how"],
                fmt_seconds(s["seconds"]),
                f"{s['megabytes'] / s['seconds']:,.0f} MB/s" if s["how"] == "copy" else "-",
            )
            for s in result["snapshots"]
        ],
        "snapshot cost on this filesystem (what log_artifact does before it returns)",
    )
    rows = build_rows(result)
    print_table(rows, "results")
    training = result["training"]
    print(
        "details:\n"
        f"  loop length {training['seconds']:.1f} s; upload still in flight when each loop "
        f"ended: {training['upload_in_flight_throughout']}",
        flush=True,
    )
    if args.json:
        write_json(args.json, {"size": size, "machine": info, "result": result, "rows": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
