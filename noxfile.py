"""Developer sessions: `nox -s tests`, `nox -s lint`, `nox -s typecheck`, `nox -s core`,
`nox -s docs`, `nox -s release`, `nox -s quickstart`."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import nox

nox.options.sessions = ["tests", "lint", "typecheck", "core", "docs", "release"]
nox.options.reuse_existing_virtualenvs = True
# The gates run side by side: installing is one pip process (one core), so `typecheck`
# installs and type-checks while `tests` installs, instead of after the whole suite. Each
# session's output is printed as one block when it ends.
nox.options.parallel = 2

PYTHON = "3.11"
# The other Pythons the package claims (pyproject's classifiers): the core tests run on each.
# torch's CPU wheel on the build machines is for 3.11 only, so the frameworks are not there.
OTHER_PYTHONS = ["3.10", "3.12", "3.13"]
# The core tests that need no framework and no MLflow server: a few seconds on each Python.
CORE_TESTS = [
    "tests/test_auth_unit.py",
    "tests/test_client_unit.py",
    "tests/test_delivery_unit.py",
    "tests/test_failure_policy_unit.py",
    "tests/test_queue_unit.py",
    "tests/test_spill_unit.py",
    "tests/test_worker_unit.py",
    "tests/test_uploads_unit.py",
    "tests/test_metric.py",
    "tests/test_env.py",
    "tests/test_public_api.py",
    "tests/test_packaging.py",
]
# --no-compile: byte-compiling every file of torch, transformers, mlflow and pyspark at
# install time doubles the install (3m45 -> 1m48 measured); Python compiles what it imports.
CONSTRAINTS = ("--no-compile", "-c", "constraints.txt")


def _pyenv_pythons() -> None:
    """Let nox find pyenv's other interpreters: pyenv's `python3.10` shim answers only for
    the versions PYENV_VERSION (or `pyenv global`) names, and the shim that started nox has
    set PYENV_VERSION to its own. The versions named stay first; every installed 3.x follows."""
    if shutil.which("pyenv") is None:
        return
    run = subprocess.run
    named = os.environ.get("PYENV_VERSION", "").strip()
    if not named:
        named = run(["pyenv", "version-name"], capture_output=True, text=True).stdout.strip()
    versions = [v for v in named.split(":") if v]
    installed = run(["pyenv", "versions", "--bare"], capture_output=True, text=True).stdout
    versions += [v for v in installed.split() if v.startswith("3.") and v not in versions]
    os.environ["PYENV_VERSION"] = ":".join(versions)


_pyenv_pythons()


def install_project(session: nox.Session, extras: str, *groups: str) -> None:
    # torch first and pinned: anything that pulls an unpinned torch gets a multi-GB CUDA build.
    session.install(*CONSTRAINTS, "torch==2.13.0")
    group_args = [arg for group in groups for arg in ("--group", group)]
    session.install(*CONSTRAINTS, "-e", f".[{extras}]", *group_args)
    write_bytecode(session)


def pip_with_groups(session: nox.Session) -> None:
    """`pip install --group` (PEP 735 dependency groups) needs pip 25.1; a virtualenv may
    come with an older one."""
    session.install("--quiet", "pip>=25.1")


def write_bytecode(session: nox.Session) -> None:
    """Let Python cache the bytecode of what it imports. With PYTHONDONTWRITEBYTECODE set (as
    on this machine) and nothing compiled at install, every test process would compile torch,
    Lightning, Transformers, ... from source again: 30 s instead of 12 s to import Lightning
    and Transformers; the suite took 23.5 minutes in a fresh session, 14.5 in a virtualenv
    whose bytecode was cached. Compiled once on first import, only what is used."""
    session.env["PYTHONDONTWRITEBYTECODE"] = None


@nox.session(python=PYTHON, allow_parallel=True)
def tests(session: nox.Session) -> None:
    """The whole suite against real MLflow servers, in parallel."""
    pip_with_groups(session)
    install_project(session, "all", "test")
    # --dist loadgroup comes from pyproject's addopts (the Spark module on one worker)
    # Keras on JAX runs inside the suite (tests/integrations/test_keras_on_jax.py).
    session.run("pytest", "-n", "2", "--durations=20", *session.posargs)


@nox.session(python=PYTHON, allow_parallel=True)
def lint(session: nox.Session) -> None:
    """ruff, and import-linter's contracts (pyproject's [tool.importlinter]): core/'s stage
    folders import only the stages below them, and no import circle in the package."""
    pip_with_groups(session)
    session.install("--group", "lint")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")
    session.run("lint-imports", env={"PYTHONPATH": installed_copy(session)})


@nox.session(python=PYTHON, allow_parallel=True)
def typecheck(session: nox.Session) -> None:
    # The package's own dependencies (every extra) are what mypy needs; not the test tools.
    install_project(session, "all")
    session.install("--no-compile", "mypy>=1.11")
    # The benchmarks too: they import the package's private modules and every framework.
    target = installed_copy(session)
    session.run("mypy", "-p", "aidp_metrics", "-p", "benchmarks", env={"MYPYPATH": target})


@nox.session(python=OTHER_PYTHONS, allow_parallel=True)
def core(session: nox.Session) -> None:
    """The core tests that need no framework and no server, on the other Pythons claimed."""
    pip_with_groups(session)
    session.install("--no-compile", "-e", ".[oci]", "--group", "core-test")
    session.run("pytest", "-q", "-p", "no:cacheprovider", *CORE_TESTS, *session.posargs)


@nox.session(python=PYTHON, allow_parallel=True)
def docs(session: nox.Session) -> None:
    """The documentation site into site/, with --strict: a broken link, an unresolved
    reference or a docstring that does not render fails. mkdocstrings reads the package as
    installed (not editable: its finder does not show core/ and integrations/ as one)."""
    pip_with_groups(session)
    session.install("--no-compile", "--group", "docs")
    session.install("--no-compile", "--no-deps", "--force-reinstall", ".")
    session.run(
        "mkdocs", "build", "--strict", "--site-dir", "site", env={"NO_MKDOCS_2_WARNING": "1"}
    )


def changelog_version() -> str:
    """The version of CHANGELOG.md's top entry (`## [X.Y.Z] - date`)."""
    text = Path("CHANGELOG.md").read_text(encoding="utf-8")
    found = re.search(r"^## \[(\d+\.\d+\.\d+[^\]]*)\]", text, re.MULTILINE)
    if found is None:
        raise RuntimeError("CHANGELOG.md has no `## [X.Y.Z]` entry")
    return found.group(1)


@nox.session(python=PYTHON, allow_parallel=True)
def release(session: nox.Session) -> None:
    """What would be published: build the sdist and wheel, `twine check --strict`, install
    the wheel (not the checkout) into a fresh environment, run the quickstart's logging path
    from it against a local MLflow server, and check that `aidp-metrics --version` is the top
    entry of CHANGELOG.md."""
    pip_with_groups(session)
    session.install("--no-compile", "--group", "release")
    tmp = Path(session.create_tmp()).resolve()
    dist = tmp / "dist"
    shutil.rmtree(dist, ignore_errors=True)
    session.run("python", "-m", "build", "--outdir", str(dist), ".")
    wheels = sorted(dist.glob("*.whl"))
    sdists = sorted(dist.glob("*.tar.gz"))
    if len(wheels) != 1 or len(sdists) != 1:
        session.error(f"expected one wheel and one sdist in {dist}")
    session.run("twine", "check", "--strict", *map(str, wheels + sdists))
    for archive, listing in ((wheels[0], "zipfile"), (sdists[0], "tarfile")):
        names = session.run("python", "-m", listing, "-l", str(archive), silent=True, log=False)
        if not re.search(r"LICENSE\b", str(names)):
            session.error(f"{archive.name} does not ship LICENSE")

    fresh = tmp / "fresh"
    shutil.rmtree(fresh, ignore_errors=True)
    session.run("python", "-m", "venv", str(fresh))
    bin_dir = fresh / "bin"
    # [local]: mlflow for the local server the quickstart starts; no torch (the loop path).
    session.run(
        str(bin_dir / "python"),
        "-m",
        "pip",
        "install",
        "--quiet",
        "--no-compile",
        f"{wheels[0]}[local]",
        external=True,
    )
    version = session.run(str(bin_dir / "aidp-metrics"), "--version", silent=True, external=True)
    expected = changelog_version()
    if str(version).split() != ["aidp-metrics", expected]:
        session.error(
            f"aidp-metrics --version says {str(version).strip()!r}; CHANGELOG.md: {expected}"
        )
    quickstart = Path("examples/quickstart.py").resolve()
    env = {"MLFLOW_TRACKING_URI": None, "AIDP_INSTANCE_ID": None, "AIDP_WORKSPACE_KEY": None}
    with session.chdir(tmp):  # nothing of the checkout on sys.path
        session.run(
            str(bin_dir / "python"),
            str(quickstart),
            "--fast",
            "--frameworks",
            "loop",
            "--output",
            str(tmp / "curves.png"),
            external=True,
            env=env,
        )


def installed_copy(session: nox.Session) -> str:
    """A plain (non-editable) copy of the package, laid out as users get it, for the tools
    that read source files (mypy, import-linter): they cannot follow setuptools' editable
    finder for our package-dir mapping (core/ and integrations/ into one package)."""
    target = f"{session.create_tmp()}/package-src"
    session.run(
        "python",
        "-m",
        "pip",
        "install",
        "--quiet",
        "--no-deps",
        "--upgrade",
        "--target",
        target,
        ".",
    )
    return target


@nox.session(python=PYTHON)
def quickstart(session: nox.Session) -> None:
    """Install and run examples/quickstart.py against a local MLflow server."""
    pip_with_groups(session)
    install_project(session, "all", "test")
    session.run("python", "examples/quickstart.py", *session.posargs)


@nox.session(python=PYTHON)
def bench(session: nox.Session) -> None:
    """Core delivery benchmark against a local MLflow server (numbers, never pass/fail)."""
    pip_with_groups(session)
    install_project(session, "all", "test")
    session.run("python", "-m", "benchmarks.bench_core", *session.posargs)


@nox.session(python=PYTHON, name="bench-watch")
def bench_watch(session: nox.Session) -> None:
    """`Run.watch` and a 300-key `log_metrics`: the training thread's cost beside the norms
    alone and a bare float() loop (numbers, never pass/fail)."""
    install_project(session, "all,test")
    session.run("python", "-m", "benchmarks.bench_watch", *session.posargs)


@nox.session(python=PYTHON, name="bench-frameworks")
def bench_frameworks(session: nox.Session) -> None:
    """Lightning / Transformers / Keras / Accelerate: start-up, steady-state overhead per step
    (interleaved repetitions, median and interval) and tail, ours vs MLflow's integrations,
    against a local MLflow server and a latency proxy in front of it (never pass/fail)."""
    pip_with_groups(session)
    install_project(session, "all", "test")
    session.run("python", "-m", "benchmarks.bench_frameworks", *session.posargs)


@nox.session(python=PYTHON, name="bench-artifacts")
def bench_artifacts(session: nox.Session) -> None:
    """Artifact uploads: snapshot cost, `log_artifact` of a 1 GB file returning in under 1 %
    of its upload time, the training thread's step cost during an upload vs none
    (interleaved), against a local MLflow server with proxied artifacts (never pass/fail)."""
    pip_with_groups(session)
    install_project(session, "all", "test")
    session.run("python", "-m", "benchmarks.bench_artifacts", *session.posargs)
