"""The local stack's prerequisites: the system packages it needs, installed if it may.

Kafka needs Java and Maven (no stack without them). Prometheus, Mosquitto (the MQTT
bridge's broker) and PostgreSQL (the sink's database) are optional: when one is missing
and cannot be installed, the stack runs without it and says so in one line, naming the
install command and the flag that skips it.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from collections.abc import Collection, Sequence
from pathlib import Path

from stack_processes import StackError, mosquittoctl, pgctl

__all__ = [
    "ensure_kafka_prerequisites",
    "ensure_mosquitto",
    "ensure_postgres",
    "ensure_prometheus",
    "missing_line",
    "searchable_by",
]


def _apt_install(packages: Sequence[str]) -> bool:
    """Install Debian packages if we may (root and apt-get present); True on success."""
    if shutil.which("apt-get") is None or os.geteuid() != 0:
        return False
    print(f"stack: installing {' '.join(packages)} with apt-get ...", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    # Debian's prometheus, mosquitto and postgresql packages would start their own daemons
    # on the default ports; the stack starts exactly the processes it needs, so no package
    # may start a service here.
    policy = Path("/usr/sbin/policy-rc.d")
    ours = not policy.exists()
    if ours:
        policy.write_text("#!/bin/sh\nexit 101\n")
        policy.chmod(0o755)
    try:
        subprocess.run(["apt-get", "update", "-q"], check=False, env=env, capture_output=True)
        result = subprocess.run(
            ["apt-get", "install", "-y", "-q", "--no-install-recommends", *packages],
            check=False,
            env=env,
            capture_output=True,
        )
    finally:
        if ours:
            policy.unlink(missing_ok=True)
    return result.returncode == 0


def ensure_kafka_prerequisites(*, install: bool) -> None:
    missing = []
    if shutil.which("java") is None:
        missing.append("openjdk-17-jre-headless")
    if shutil.which("mvn") is None:
        missing.append("maven")
    if missing and not (install and _apt_install(missing)):
        raise StackError(
            f"Kafka needs {' and '.join(missing)}: apt-get install -y {' '.join(missing)}"
        )


def ensure_prometheus(*, install: bool) -> str | None:
    """Path of the prometheus binary, installing Debian's package if needed; None if absent."""
    found = shutil.which("prometheus")
    if found is None and install and _apt_install(["prometheus"]):
        found = shutil.which("prometheus")
    return found


def _have_mosquitto() -> bool:
    try:
        mosquittoctl.require_mosquitto()
    except mosquittoctl.MosquittoctlError:
        return False
    return True


def _have_postgres() -> bool:
    try:
        pgctl.bindir()
    except pgctl.PgctlError:
        return False
    return True


def ensure_mosquitto(*, install: bool) -> bool:
    """True if Mosquitto is installed (installing Debian's package if we may)."""
    return _have_mosquitto() or (install and _apt_install(["mosquitto"]) and _have_mosquitto())


def ensure_postgres(*, install: bool) -> bool:
    """True if PostgreSQL's server binaries are there (installing the package if we may)."""
    return _have_postgres() or (install and _apt_install(["postgresql"]) and _have_postgres())


def missing_line(what: str, package: str, skipped: str, flag: str) -> str:
    """The one line that says a server is missing, how to add it, and how to say 'no'."""
    return (
        f"stack: {what} is not installed and could not be installed; running without "
        f"{skipped}. To add it: apt-get install -y --no-install-recommends {package} (or "
        f"deploy/install-prereqs); {flag} runs without it and says nothing."
    )


def searchable_by(path: Path, uid: int, gids: Collection[int]) -> bool:
    """True if the user ``uid`` (in groups ``gids``) may enter ``path`` and each parent.

    Run as root, PostgreSQL runs as the ``postgres`` user, and its data dir must be
    reachable by it: ``/tmp/pytest-of-root`` (0700) is not, the repository (0755) is.
    Parts that do not exist yet are skipped (they are made 0755).
    """
    for directory in (path, *path.parents):
        try:
            info = directory.stat()
        except FileNotFoundError:
            continue
        if info.st_uid == uid:
            needed = stat.S_IXUSR
        elif info.st_gid in gids:
            needed = stat.S_IXGRP
        else:
            needed = stat.S_IXOTH
        if not info.st_mode & needed:
            return False
    return True
