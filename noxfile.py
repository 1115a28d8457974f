"""Developer sessions: `nox -s tests`, `nox -s lint`, `nox -s typecheck`, `nox -s quickstart`."""

from __future__ import annotations

import nox

nox.options.sessions = ["tests", "lint", "typecheck"]
nox.options.reuse_existing_virtualenvs = True
# The gates run side by side: installing is one pip process (one core), so `typecheck`
# installs and type-checks while `tests` installs, instead of after the whole suite. Each
# session's output is printed as one block when it ends.
nox.options.parallel = 2

PYTHON = "3.11"
# --no-compile: byte-compiling every file of torch, transformers, mlflow and pyspark at
# install time doubles the install (3m45 -> 1m48 measured); Python compiles what it imports.
CONSTRAINTS = ("--no-compile", "-c", "constraints.txt")


def install_project(session: nox.Session, extras: str) -> None:
    # torch first and pinned: anything that pulls an unpinned torch gets a multi-GB CUDA build.
    session.install(*CONSTRAINTS, "torch==2.13.0")
    session.install(*CONSTRAINTS, "-e", f".[{extras}]")
    write_bytecode(session)


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
    install_project(session, "all,test")
    # --dist loadgroup comes from pyproject's addopts (the Spark module on one worker)
    # Keras on JAX runs inside the suite (tests/integrations/test_keras_on_jax.py).
    session.run("pytest", "-n", "2", "--durations=20", *session.posargs)


@nox.session(python=PYTHON, allow_parallel=True)
def lint(session: nox.Session) -> None:
    """ruff, and import-linter's contracts (pyproject's [tool.importlinter]): core/'s stage
    folders import only the stages below them, and no import circle in the package."""
    session.install("ruff>=0.6", "import-linter>=2.17")
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
    install_project(session, "all,test")
    session.run("python", "examples/quickstart.py", *session.posargs)


@nox.session(python=PYTHON)
def bench(session: nox.Session) -> None:
    """Core delivery benchmark against a local MLflow server (numbers, never pass/fail)."""
    install_project(session, "all,test")
    session.run("python", "-m", "benchmarks.bench_core", *session.posargs)


@nox.session(python=PYTHON, name="bench-frameworks")
def bench_frameworks(session: nox.Session) -> None:
    """Lightning / Transformers / Keras / Accelerate: start-up, steady-state overhead per step
    (interleaved repetitions, median and interval) and tail, ours vs MLflow's integrations,
    against a local MLflow server and a latency proxy in front of it (never pass/fail)."""
    install_project(session, "all,test")
    session.run("python", "-m", "benchmarks.bench_frameworks", *session.posargs)


@nox.session(python=PYTHON, name="bench-artifacts")
def bench_artifacts(session: nox.Session) -> None:
    """Artifact uploads: snapshot cost, `log_artifact` of a 1 GB file returning in under 1 %
    of its upload time, the training thread's step cost during an upload vs none
    (interleaved), against a local MLflow server with proxied artifacts (never pass/fail)."""
    install_project(session, "all,test")
    session.run("python", "-m", "benchmarks.bench_artifacts", *session.posargs)
