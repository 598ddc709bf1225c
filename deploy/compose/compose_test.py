"""``make compose-test``: bring docker-compose.yml up for real and check that it works.

On a machine without a Docker engine or an image registry (deploy/compose/README.md):

1. installs podman, runc, debootstrap and docker-compose with apt-get if missing, and
   configures /etc/containers/containers.conf for a machine without systemd;
2. makes the base images without a registry: a debootstrapped Debian bookworm with
   python3, python3-venv and the machine's CA certificates, imported once into podman's
   storage and tagged ``python:3.12-slim`` (our services' base) and
   ``debian:bookworm-slim`` (the stand-ins'); a second run reuses it. Where the registry
   answers, the real images are pulled instead;
3. builds the producer, processor, bridge and sink images and the Kafka, Mosquitto,
   PostgreSQL and Prometheus stand-ins (podman's layer cache makes a second run quick);
4. serves podman's Docker API on a private socket and runs
   ``docker-compose -p <unique> up -d`` against it, then checks: init-topics exited 0,
   readings flow into ``sensor-data``, every processor's ``/readyz`` is 200 and the six
   partitions are spread evenly, the consumer group has them (kafka-consumer-groups.sh),
   Prometheus scrapes every replica, ``--scale processor=3`` gives 2/2/2 and, with the
   sources stopped and the windows closed, ``sensorstream-audit`` finds nothing lost or
   counted twice (the sources start again), scaling back to 1 gives
   that one all six, the devices' readings arrive through Mosquitto, the bridge, Kafka,
   the processor and the sink in PostgreSQL, ``stop`` ends every container with exit
   code 0, and ``down -v`` leaves nothing behind.

Where a Docker engine answers (``docker info``), it is used instead of podman. Whatever
happens, the stack is taken down (``down -v``), the podman service stopped and its
socket directory removed. A failed check prints the failing service's logs and exits 1.

    uv run python deploy/compose/compose_test.py            # what `make compose-test` runs
    uv run python deploy/compose/compose_test.py --keep-up  # leave the stack up to look at it
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import tomllib
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
CACHE = REPO / ".cache" / "compose-test"
COMPOSE_FILE = REPO / "docker-compose.yml"

# The debootstrapped base, and the names our Dockerfiles' FROM lines use for it.
LOCAL_BASE = "localhost/sensorstream-bookworm-py:latest"
PYTHON_BASE = "docker.io/library/python:3.12-slim"
DEBIAN_BASE = "docker.io/library/debian:bookworm-slim"

PARTITIONS = 6
INPUT_TOPIC = "sensor-data"
PROCESSOR_GROUP = "sensorstream-processor"
PROCESSOR_JOB = "sensorstream-processor"
# Every Prometheus job of deploy/prometheus/prometheus.yml that scrapes one of our services.
SCRAPED_JOBS = {
    "sensorstream-producer": "producer",
    "sensorstream-processor": "processor",
    "sensorstream-audit": "audit",
    "sensorstream-bridge": "bridge",
    "sensorstream-sink": "sink",
}
# Tumbling windows of the processor during the test (the compose default is 10 s).
WINDOW_SIZE = 5
# The processor's default --idle-timeout: a silent partition's windows close after it.
IDLE_TIMEOUT = 30


@dataclass(frozen=True)
class Image:
    """An image the stack runs, built from a Dockerfile of the repository."""

    tag: str
    dockerfile: str


IMAGE_PREFIX = "localhost/sensorstream"
IMAGE_TAG = "latest"
IMAGES = (
    Image("localhost/sensorstream-kafka:4.1.1", "deploy/compose/kafka/Dockerfile"),
    Image(f"{IMAGE_PREFIX}-processor:{IMAGE_TAG}", "services/processor/Dockerfile"),
    Image(f"{IMAGE_PREFIX}-producer:{IMAGE_TAG}", "services/producer/Dockerfile"),
    Image(f"{IMAGE_PREFIX}-bridge:{IMAGE_TAG}", "services/bridge/Dockerfile"),
    Image(f"{IMAGE_PREFIX}-sink:{IMAGE_TAG}", "services/sink/Dockerfile"),
    Image("localhost/sensorstream-postgres:debian", "deploy/compose/postgres/Dockerfile"),
    Image("localhost/sensorstream-mosquitto:debian", "deploy/compose/mosquitto/Dockerfile"),
    Image("localhost/sensorstream-prometheus:debian", "deploy/compose/prometheus/Dockerfile"),
)
# The compose knobs (.env.example) that select the images above.
IMAGE_KNOBS = {
    "IMAGE_PREFIX": IMAGE_PREFIX,
    "IMAGE_TAG": IMAGE_TAG,
    "KAFKA_IMAGE": "localhost/sensorstream-kafka:4.1.1",
    "POSTGRES_IMAGE": "localhost/sensorstream-postgres:debian",
    "POSTGRES_IMAGE_USER": "70:70",
    "MOSQUITTO_IMAGE": "localhost/sensorstream-mosquitto:debian",
    "PROMETHEUS_IMAGE": "localhost/sensorstream-prometheus:debian",
}

# /etc/containers/containers.conf for podman on a machine without systemd
# (/work/shared/notes/containers.md): no systemd cgroup manager, runc, and no default
# ulimits (the defaults cannot be raised in an unprivileged sandbox).
CONTAINERS_CONF = """\
[containers]
default_ulimits = []
[engine]
cgroup_manager = "cgroupfs"
runtime = "runc"
"""
# What podman needs here, by the file that shows it installed. catatonit is the init of
# `init: true`; the DNS that lets services find each other by name is aardvark-dns under
# netavark (the backend podman picks on a fresh machine) and the dnsname plugin under CNI
# (the one it keeps where it ran before): neither is a Depends of podman.
APT_PACKAGES = {
    "podman": "podman",
    "runc": "runc",
    "catatonit": "/usr/libexec/podman/catatonit",
    "netavark": "/usr/lib/podman/netavark",
    "aardvark-dns": "/usr/lib/podman/aardvark-dns",
    "golang-github-containernetworking-plugin-dnsname": "/usr/lib/cni/dnsname",
    "iptables": "iptables",
    "debootstrap": "debootstrap",
    "docker-compose": "docker-compose",
}


class CheckFailed(Exception):  # noqa: N818 - a check that failed, not a program error
    """A check did not hold; ``service`` is whose logs explain it (None: every service's)."""

    def __init__(self, message: str, service: str | None = None) -> None:
        super().__init__(message)
        self.service = service


# ---- output ------------------------------------------------------------------------------

_START = time.monotonic()


def say(message: str) -> None:
    sys.stdout.write(f"[{time.monotonic() - _START:6.1f}s] {message}\n")
    sys.stdout.flush()


def step(title: str) -> None:
    say(f"== {title}")


def ok(message: str) -> None:
    say(f"   ok: {message}")


# ---- pure parts (tests/deploy/test_compose_test.py) --------------------------------------


def containers_conf_ok(text: str) -> bool:
    """Whether a containers.conf already has what podman needs here."""
    try:
        conf = tomllib.loads(text)
    except tomllib.TOMLDecodeError:
        return False
    engine = conf.get("engine", {})
    return (
        engine.get("cgroup_manager") == "cgroupfs"
        and engine.get("runtime") == "runc"
        and conf.get("containers", {}).get("default_ulimits") == []
    )


def parse_offsets(text: str, topic: str) -> dict[int, int]:
    """Partition -> end offset from kafka-get-offsets.sh's ``topic:partition:offset`` lines."""
    offsets: dict[int, int] = {}
    for line in text.splitlines():
        parts = line.strip().rsplit(":", 2)
        if len(parts) == 3 and parts[0] == topic and parts[1].isdigit() and parts[2].isdigit():
            offsets[int(parts[1])] = int(parts[2])
    return offsets


def parse_group_members(text: str, topic: str) -> dict[int, str]:
    """Partition -> consumer id from ``kafka-consumer-groups.sh --describe --group G``.

    Partitions without an active member (CONSUMER-ID ``-``) are left out.
    """
    members: dict[int, str] = {}
    header: list[str] | None = None
    for line in text.splitlines():
        fields = line.split()
        if "PARTITION" in fields and "CONSUMER-ID" in fields:
            header = fields
            continue
        if header is None or len(fields) < len(header):
            continue
        row = dict(zip(header, fields, strict=False))
        if row.get("TOPIC") != topic or not row.get("PARTITION", "").isdigit():
            continue
        if row.get("CONSUMER-ID", "-") != "-":
            members[int(row["PARTITION"])] = row["CONSUMER-ID"]
    return members


def spread_problem(assigned: Mapping[str, Iterable[int]], partitions: int) -> str | None:
    """What is wrong with replicas' partition assignments, or None when they are even.

    Even: every partition owned by exactly one replica, every replica with
    ``partitions // replicas`` or one more (6 on 3 replicas: 2/2/2; on 1: 6).
    """
    if not assigned:
        return "no replica"
    owners: dict[int, list[str]] = {}
    for replica, owned in assigned.items():
        for partition in owned:
            owners.setdefault(partition, []).append(replica)
    missing = sorted(set(range(partitions)) - set(owners))
    if missing:
        return f"partitions {missing} have no replica"
    shared = {p: names for p, names in owners.items() if len(names) > 1}
    if shared:
        return f"partitions owned twice: {shared}"
    extra = sorted(set(owners) - set(range(partitions)))
    if extra:
        return f"unknown partitions {extra}"
    low, remainder = divmod(partitions, len(assigned))
    allowed = {low, low + 1} if remainder else {low}
    if any(len(list(owned)) not in allowed for owned in assigned.values()):
        return f"uneven spread {spread(assigned)}"
    return None


def spread(assigned: Mapping[str, Iterable[int]]) -> str:
    """``2/2/2``: how many partitions each replica has, largest first."""
    return "/".join(str(n) for n in sorted((len(list(v)) for v in assigned.values()), reverse=True))


def prometheus_scalar(body: Mapping[str, Any]) -> float | None:
    """The single value of an instant-query answer (None: an empty result)."""
    if body.get("status") != "success":
        raise ValueError(f"query failed: {body.get('error', body)}")
    result = body["data"]["result"]
    if not result:
        return None
    return float(result[0]["value"][1])


def exit_problems(containers: Iterable[Mapping[str, Any]]) -> list[str]:
    """Containers (``docker inspect`` objects) that are not exited with code 0."""
    problems = []
    for container in containers:
        state = container["State"]
        name = container["Name"].lstrip("/")
        if state["Status"] != "exited":
            problems.append(f"{name}: {state['Status']}")
        elif state["ExitCode"] != 0:
            problems.append(f"{name}: exit code {state['ExitCode']}")
    return problems


# ---- running things ----------------------------------------------------------------------


def run(
    argv: list[str],
    *,
    env: Mapping[str, str] | None = None,
    timeout: float = 600,
    check: bool = True,
    quiet: bool = False,
    log: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a command, its output captured (or streamed into ``log`` as it comes)."""
    if not quiet:
        say(f"   $ {' '.join(argv)}")
    try:
        if log is None:
            result = subprocess.run(
                argv,
                cwd=REPO,
                env=dict(env) if env is not None else None,
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
            )
        else:
            with log.open("w") as out:
                completed = subprocess.run(
                    argv,
                    cwd=REPO,
                    env=dict(env) if env is not None else None,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    timeout=timeout,
                    check=False,
                )
            result = subprocess.CompletedProcess(argv, completed.returncode, log.read_text(), "")
    except subprocess.TimeoutExpired as exc:
        raise CheckFailed(f"{' '.join(argv)} did not finish within {timeout:.0f} s") from exc
    if check and result.returncode != 0:
        output = (result.stdout + result.stderr).strip().splitlines()
        raise CheckFailed(
            f"{' '.join(argv)} exited {result.returncode}:\n      " + "\n      ".join(output[-40:])
        )
    return result


def wait_for(
    what: str,
    probe: Callable[[], tuple[bool, str]],
    *,
    timeout: float,
    interval: float = 2,
    service: str | None = None,
) -> str:
    """Call ``probe`` until it says done; its detail string is returned or, on timeout, in
    the failure."""
    deadline = time.monotonic() + timeout
    detail = "never probed"
    while True:
        try:
            done, detail = probe()
        except (CheckFailed, OSError, ValueError, KeyError) as exc:
            done, detail = False, str(exc)
        if done:
            return detail
        if time.monotonic() > deadline:
            raise CheckFailed(f"{what}: not so after {timeout:.0f} s (last: {detail})", service)
        time.sleep(interval)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# ---- set-up: packages, podman, base images, images ---------------------------------------


def docker_engine_answers() -> bool:
    if shutil.which("docker") is None:
        return False
    result = subprocess.run(
        ["docker", "info"], capture_output=True, text=True, timeout=30, check=False
    )
    return result.returncode == 0


def install_packages(engine: str) -> None:
    step("System packages")
    wanted = ["docker-compose"] if engine == "docker" else list(APT_PACKAGES)
    missing = [name for name in wanted if shutil.which(APT_PACKAGES[name]) is None]
    if not missing:
        ok(f"{', '.join(wanted)} installed")
        return
    if shutil.which("apt-get") is None:
        raise CheckFailed(f"missing {' '.join(missing)} and no apt-get here: install them")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    run(["apt-get", "update", "-q"], env=env)
    run(["apt-get", "install", "-y", "-q", "--no-install-recommends", *missing], env=env)
    ok(f"installed {' '.join(missing)}")


def configure_podman() -> None:
    conf = Path("/etc/containers/containers.conf")
    if Path("/run/systemd/system").is_dir():
        ok("systemd runs here: podman's default containers.conf is kept")
        return
    if conf.exists():
        if containers_conf_ok(conf.read_text()):
            ok(f"{conf} already set for a machine without systemd")
            return
        raise CheckFailed(
            f"{conf} exists but lacks what podman needs without systemd; make it say:\n"
            + CONTAINERS_CONF
        )
    conf.parent.mkdir(parents=True, exist_ok=True)
    conf.write_text(CONTAINERS_CONF)
    ok(f"wrote {conf} (cgroupfs, runc, no default ulimits)")


def image_exists(cli: str, tag: str) -> bool:
    result = subprocess.run(
        [cli, "image", "inspect", tag], capture_output=True, text=True, timeout=60, check=False
    )
    return result.returncode == 0


def try_pull(cli: str, tag: str) -> bool:
    try:
        result = subprocess.run(
            [cli, "pull", "-q", tag], capture_output=True, text=True, timeout=120, check=False
        )
    except subprocess.TimeoutExpired:
        return False
    return result.returncode == 0


def debootstrap_base(cli: str) -> None:
    """Debian bookworm with python3, python3-venv and this machine's CA certificates, imported
    as LOCAL_BASE (about a minute; done once, then reused from podman's storage)."""
    with tempfile.TemporaryDirectory(prefix="sensorstream-rootfs-", dir="/var/tmp") as tmp:
        root = Path(tmp) / "rootfs"
        run(
            [
                "debootstrap",
                "--variant=minbase",
                "--include=python3,python3-venv,ca-certificates",
                "bookworm",
                str(root),
            ],
            timeout=900,
        )
        # The machine's trust store (HTTPS to the package registries from inside builds),
        # and its local CAs one by one: Maven builds its trust store from those.
        bundle = Path("/etc/ssl/certs/ca-certificates.crt")
        if bundle.exists():
            shutil.copy(bundle, root / "etc/ssl/certs/ca-certificates.crt")
        local_cas = sorted(Path("/usr/local/share/ca-certificates").glob("*.crt"))
        if local_cas:
            target = root / "usr/local/share/ca-certificates"
            target.mkdir(parents=True, exist_ok=True)
            for ca in local_cas:
                shutil.copy(ca, target / ca.name)
            run(["chroot", str(root), "update-ca-certificates"])
        with subprocess.Popen(["tar", "-C", str(root), "-c", "."], stdout=subprocess.PIPE) as tar:
            imported = subprocess.run(
                [
                    cli,
                    "import",
                    "--change",
                    "ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt",
                    "--change",
                    "ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt",
                    "-",
                    LOCAL_BASE,
                ],
                stdin=tar.stdout,
                capture_output=True,
                text=True,
                check=False,
                timeout=600,
            )
        if imported.returncode != 0:
            raise CheckFailed(f"{cli} import failed: {imported.stderr.strip()}")


def base_images(cli: str) -> None:
    step("Base images")
    for tag in (PYTHON_BASE, DEBIAN_BASE):
        if image_exists(cli, tag):
            ok(f"{tag}: present, reused")
            continue
        if try_pull(cli, tag):
            ok(f"{tag}: pulled from the registry")
            continue
        if not image_exists(cli, LOCAL_BASE):
            say(f"   {tag} cannot be pulled: debootstrapping {LOCAL_BASE} (once)")
            debootstrap_base(cli)
        run([cli, "tag", LOCAL_BASE, tag])
        ok(f"{tag}: {LOCAL_BASE} (debootstrapped bookworm, Python 3.11)")


def build_images(cli: str) -> None:
    step("Images (layer cache: unchanged images take seconds)")
    CACHE.mkdir(parents=True, exist_ok=True)
    format_flag = ["--format", "docker"] if cli == "podman" else []

    def build(image: Image) -> tuple[Image, float]:
        started = time.monotonic()
        log = CACHE / f"build-{Path(image.dockerfile).parent.name}.log"
        try:
            run(
                [cli, "build", *format_flag, "-f", image.dockerfile, "-t", image.tag, "."],
                timeout=1200,
                quiet=True,
                log=log,
            )
        except CheckFailed as exc:
            raise CheckFailed(f"building {image.tag} failed (whole log: {log}): {exc}") from exc
        return image, time.monotonic() - started

    # Two at a time: the builds mostly wait on downloads, and this machine has 2 cores.
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        for image, seconds in pool.map(build, IMAGES):
            size = run(
                [cli, "image", "inspect", "--format", "{{.Size}}", image.tag], quiet=True
            ).stdout.strip()
            ok(f"{image.tag} from {image.dockerfile}: {seconds:.0f} s, {int(size) / 1e6:.0f} MB")


# ---- the engine's API: podman system service on a private socket ------------------------


class PodmanService:
    """``podman system service`` on a socket in a private directory, stopped by its pid."""

    def __init__(self) -> None:
        self.directory = Path(tempfile.mkdtemp(prefix="sensorstream-podman-"))
        self.socket = self.directory / "podman.sock"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> str:
        self.process = subprocess.Popen(
            ["podman", "system", "service", "--time=0", f"unix://{self.socket}"],
            stdout=subprocess.DEVNULL,
            stderr=(self.directory / "service.log").open("wb"),
        )
        wait_for("podman's API socket", self._answers, timeout=30, interval=0.2)
        ok(f"podman system service (pid {self.process.pid}) on {self.socket}")
        return f"unix://{self.socket}"

    def _answers(self) -> tuple[bool, str]:
        if self.process is not None and self.process.poll() is not None:
            log = (self.directory / "service.log").read_text(errors="replace")
            raise CheckFailed(f"podman system service exited: {log[-2000:]}")
        if not self.socket.exists():
            return False, "no socket yet"
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(2)
            sock.connect(str(self.socket))
            sock.sendall(b"GET /_ping HTTP/1.0\r\n\r\n")
            answer = sock.recv(100)
        return answer.startswith(b"HTTP/1.") and b" 200 " in answer, answer[:40].decode()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            say(f"   stopped podman system service (pid {self.process.pid})")
        shutil.rmtree(self.directory, ignore_errors=True)


# ---- the stack ---------------------------------------------------------------------------


class Stack:
    """docker-compose on one unique project, with the images and ports of this test."""

    def __init__(self, cli: str, docker_host: str | None, workdir: Path, guarantee: str) -> None:
        self.cli = cli
        self.project = f"sscomposetest{os.getpid()}"
        self.prometheus_port = free_port()
        knobs = {
            **IMAGE_KNOBS,
            "PARTITIONS": str(PARTITIONS),
            "PROCESSOR_WINDOW_SIZE": str(WINDOW_SIZE),
            "PROCESSOR_GUARANTEE": guarantee,
            "KAFKA_HOST_PORT": str(free_port()),
            "MQTT_HOST_PORT": str(free_port()),
            "PROMETHEUS_PORT": str(self.prometheus_port),
            "GRAFANA_PORT": str(free_port()),
        }
        # An env file of its own: a developer's .env must not change what is tested.
        self.env_file = workdir / "compose-test.env"
        self.env_file.write_text("".join(f"{k}={v}\n" for k, v in knobs.items()))
        self.env = {k: v for k, v in os.environ.items() if k not in knobs}
        self.env.pop("COMPOSE_PROFILES", None)
        self.env["COMPOSE_HTTP_TIMEOUT"] = "180"
        if docker_host is not None:
            self.env["DOCKER_HOST"] = docker_host

    def compose(self, *args: str, timeout: float = 300, check: bool = True) -> str:
        say(f"   $ docker-compose -p {self.project} {' '.join(args)}")
        argv = [
            "docker-compose",
            "-p",
            self.project,
            "-f",
            str(COMPOSE_FILE),
            "--project-directory",
            str(REPO),
            "--env-file",
            str(self.env_file),
            *args,
        ]
        return run(argv, env=self.env, timeout=timeout, check=check, quiet=True).stdout

    def containers(self, service: str | None = None) -> list[dict[str, Any]]:
        """``docker inspect`` of the project's containers (of one service), by number."""
        label = f"label=com.docker.compose.project={self.project}"
        ids = run(
            [self.cli, "ps", "-a", "-q", "--no-trunc", "--filter", label], quiet=True
        ).stdout.split()
        if not ids:
            return []
        found = json.loads(run([self.cli, "inspect", *ids], quiet=True).stdout)
        if service is not None:
            found = [
                c for c in found if c["Config"]["Labels"]["com.docker.compose.service"] == service
            ]
        return sorted(
            found,
            key=lambda c: (
                c["Config"]["Labels"]["com.docker.compose.service"],
                int(c["Config"]["Labels"].get("com.docker.compose.container-number", 0)),
            ),
        )

    def remove_everything(self) -> None:
        """``down -v``, then whatever it left (a container restarting during ``down``)."""
        self.compose("down", "-v", "--remove-orphans", "-t", "10", timeout=300, check=False)
        label = f"label=com.docker.compose.project={self.project}"
        for kind, listing in (
            ("container", ["ps", "-a", "-q"]),
            ("volume", ["volume", "ls", "-q"]),
            ("network", ["network", "ls", "-q"]),
        ):
            ids = run([self.cli, *listing, "--filter", label], quiet=True, check=False).stdout
            if ids.split():
                say(f"   removing {kind}s down left: {' '.join(ids.split())}")
                remove = ["rm", "-f"] if kind == "container" else [kind, "rm", "-f"]
                run([self.cli, *remove, *ids.split()], quiet=True, check=False)

    def exec_in(self, container: Mapping[str, Any], *argv: str, timeout: float = 60) -> str:
        return run([self.cli, "exec", container["Id"], *argv], timeout=timeout, quiet=True).stdout

    def kafka_tool(self, tool: str, *args: str) -> str:
        return self.compose(
            "exec", "-T", "kafka", f"/opt/kafka/bin/{tool}", "--bootstrap-server", "localhost:9092",
            *args, timeout=120,
        )  # fmt: skip

    def logs(self, service: str | None, tail: int) -> str:
        args = ["logs", "--no-color", "--tail", str(tail)]
        if service is not None:
            args.append(service)
        result = subprocess.run(
            ["docker-compose", "-p", self.project, "-f", str(COMPOSE_FILE), "--project-directory",
             str(REPO), "--env-file", str(self.env_file), *args],
            cwd=REPO, env=self.env, capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        return result.stdout + result.stderr

    def prometheus(self, query: str) -> float | None:
        url = f"http://127.0.0.1:{self.prometheus_port}/api/v1/query?" + urllib.parse.urlencode(
            {"query": query}
        )
        with urllib.request.urlopen(url, timeout=5) as answer:
            return prometheus_scalar(json.load(answer))


READYZ = (
    "import json, os, urllib.error, urllib.request as r\n"
    "url = 'http://127.0.0.1:' + os.environ['SENSORSTREAM_METRICS_PORT'] + '/readyz'\n"
    "try:\n"
    "    answer = r.urlopen(url, timeout=3)\n"
    "    print(json.dumps({'status': answer.status, 'body': json.load(answer)}))\n"
    "except urllib.error.HTTPError as e:\n"
    "    print(json.dumps({'status': e.code, 'body': json.load(e)}))\n"
)


def readyz(stack: Stack) -> dict[str, dict[str, Any]]:
    """Each processor replica's /readyz: container name -> {status, body}."""
    answers = {}
    for container in stack.containers("processor"):
        if container["State"]["Status"] != "running":
            continue
        name = container["Name"].lstrip("/")
        answers[name] = json.loads(stack.exec_in(container, "python", "-c", READYZ))
    return answers


def check_processors(stack: Stack, replicas: int, timeout: float = 120) -> None:
    """Every replica ready (/readyz 200) with an even share of the partitions, and
    Prometheus scraping each of them."""

    def even() -> tuple[bool, str]:
        answers = readyz(stack)
        if len(answers) != replicas:
            return False, f"{len(answers)} replicas running, want {replicas}"
        not_ready = {n: a for n, a in answers.items() if a["status"] != 200}
        if not_ready:
            return False, f"/readyz not 200: {not_ready}"
        assigned = {n: a["body"]["assigned_partitions"] for n, a in answers.items()}
        problem = spread_problem(assigned, PARTITIONS)
        if problem is not None:
            return False, f"{problem}: {assigned}"
        return True, f"{spread(assigned)} {assigned}"

    detail = wait_for(
        f"{replicas} processor replicas ready with an even spread",
        even,
        timeout=timeout,
        service="processor",
    )
    ok(f"/readyz 200 on all {replicas}; partitions {detail}")

    query = f'count(up{{job="{PROCESSOR_JOB}"}} == 1)'

    def scraped() -> tuple[bool, str]:
        value = stack.prometheus(query)
        total = stack.prometheus(f'count(up{{job="{PROCESSOR_JOB}"}})')
        return value == replicas and total == replicas, f"{query} = {value}, targets {total}"

    detail = wait_for(
        f"Prometheus scraping {replicas} processors", scraped, timeout=60, service="prometheus"
    )
    ok(f"Prometheus: {detail}")


def check_consumer_group(stack: Stack) -> None:
    def described() -> tuple[bool, str]:
        text = stack.kafka_tool(
            "kafka-consumer-groups.sh", "--describe", "--group", PROCESSOR_GROUP
        )
        members = parse_group_members(text, INPUT_TOPIC)
        return len(members) == PARTITIONS, f"{len(members)} of {PARTITIONS} partitions: {members}"

    detail = wait_for(
        "the consumer group has every partition", described, timeout=60, service="kafka"
    )
    ok(f"kafka-consumer-groups.sh --describe: {detail.split(':')[0]}")


def input_offsets(stack: Stack) -> dict[int, int]:
    return parse_offsets(
        stack.kafka_tool("kafka-get-offsets.sh", "--topic", INPUT_TOPIC), INPUT_TOPIC
    )


def check_stack(stack: Stack) -> None:
    step(f"docker-compose -p {stack.project} up -d (podman's Docker API)")
    # No --build: the images are built above (podman needs --format docker for HEALTHCHECK).
    # A hang here is a `depends_on: condition: service_healthy` (podman runs no healthchecks).
    stack.compose("up", "-d", "--no-build", timeout=420)
    ok("up -d exited 0")

    step("Topics and services")
    (init,) = stack.containers("init-topics")
    if init["State"]["Status"] != "exited" or init["State"]["ExitCode"] != 0:
        raise CheckFailed(
            f"init-topics: {init['State']['Status']}, exit {init['State']['ExitCode']}",
            "init-topics",
        )
    ok("init-topics exited 0 (topics created)")
    topics = stack.kafka_tool("kafka-topics.sh", "--list").split()
    expected = {INPUT_TOPIC, "sensor-aggregates", "sensor-alerts", "sensor-data.dlq"}
    if not expected <= set(topics):
        raise CheckFailed(
            f"topics {sorted(expected - set(topics))} missing: {topics}", "init-topics"
        )
    ok(f"topics: {', '.join(sorted(expected))}")
    not_running = [
        f"{c['Name'].lstrip('/')}: {c['State']['Status']}"
        for c in stack.containers()
        if c["Config"]["Labels"]["com.docker.compose.service"] != "init-topics"
        and c["State"]["Status"] != "running"
    ]
    if not_running:
        raise CheckFailed(f"not running: {not_running}")
    ok(f"{len(stack.containers()) - 1} containers running")

    step("Readings flow into sensor-data")
    first = input_offsets(stack)

    def growing() -> tuple[bool, str]:
        now = input_offsets(stack)
        grew = sum(now.values()) > sum(first.values()) and len(now) == PARTITIONS
        return (
            grew,
            f"end offsets {sum(first.values())} -> {sum(now.values())} over {len(now)} partitions",
        )

    ok(wait_for("the input topic's end offsets grow", growing, timeout=90, service="producer"))

    step("Two processor replicas (the compose default)")
    check_processors(stack, 2)
    check_consumer_group(stack)
    for job, service in SCRAPED_JOBS.items():
        value = wait_for(
            f"Prometheus scraping {job}",
            lambda job=job: _job_up(stack, job),
            timeout=60,
            service=service,
        )
        ok(f"Prometheus: {value}")

    step("--scale processor=3")
    stack.compose("up", "-d", "--no-build", "--scale", "processor=3", timeout=300)
    check_processors(stack, 3)

    # A one-shot audit counts the readings of still-open windows as missing (docs/audit.md),
    # and `--until` on a live pipeline counts the windows after it as overcounted: so drain
    # the pipeline instead. Stop the sources, let the processors close every window (their
    # idle timeout, 30 s), then audit everything from the beginning.
    step("sensorstream-audit over the whole input, drained, with 3 replicas")
    stack.compose("stop", "producer", "devices", timeout=120)
    (auditor, *_) = stack.containers("processor")
    last: list[str] = []

    def audited() -> tuple[bool, str]:
        result = run(
            [stack.cli, "exec", auditor["Id"], "sensorstream-audit", "--limit", "5"],
            timeout=180,
            check=False,
            quiet=True,
        )
        last[:] = (result.stdout + result.stderr).strip().splitlines()
        summary = [line for line in last if "missing (neither)" in line or "counted twice" in line]
        return result.returncode == 0, f"exit {result.returncode}: {' '.join(summary)}"

    time.sleep(IDLE_TIMEOUT)
    try:
        detail = wait_for("sensorstream-audit exits 0", audited, timeout=90, interval=10)
    except CheckFailed as exc:
        raise CheckFailed(f"{exc}\n" + "\n".join(last), "processor") from exc
    for line in last[:8]:
        say(f"      {line}")
    ok(f"sensorstream-audit: {detail} (nothing missing, nothing counted twice)")
    stack.compose("start", "producer", "devices", timeout=120)

    step("--scale processor=1")
    stack.compose("up", "-d", "--no-build", "--scale", "processor=1", timeout=300)
    check_processors(stack, 1)

    step("MQTT devices -> Mosquitto -> bridge -> Kafka -> processor -> sink -> PostgreSQL")
    sql = "SELECT count(*), coalesce(sum(count), 0) FROM aggregates WHERE sensor_id LIKE 'device-%'"

    def rows() -> tuple[bool, str]:
        out = stack.compose(
            "exec", "-T", "postgres", "psql", "-U", "sensorstream", "-d", "sensorstream",
            "-Atc", sql, timeout=60,
        ).strip()  # fmt: skip
        windows, readings = (int(x) for x in out.split("|"))
        return windows > 0, f"{windows} device windows ({readings} readings) in aggregates"

    ok(wait_for("device aggregates in PostgreSQL", rows, timeout=120, service="sink"))

    step("docker-compose stop: every container exits 0")
    stack.compose("stop", timeout=300)
    containers = stack.containers()
    problems = exit_problems(containers)
    if problems:
        first_bad = problems[0].split(":")[0]
        service = next(
            c["Config"]["Labels"]["com.docker.compose.service"]
            for c in containers
            if c["Name"].lstrip("/") == first_bad
        )
        raise CheckFailed(f"not a clean stop: {problems}", service)
    ok(f"{len(containers)} containers exited 0")

    step("docker-compose down -v")
    stack.compose("down", "-v", "--remove-orphans", timeout=300)
    left = stack.containers()
    label = f"label=com.docker.compose.project={stack.project}"
    volumes = run([stack.cli, "volume", "ls", "-q", "--filter", label], quiet=True).stdout.split()
    if left or volumes:
        raise CheckFailed(f"down -v left {len(left)} containers and volumes {volumes}")
    ok("no container, no volume left")


def _job_up(stack: Stack, job: str) -> tuple[bool, str]:
    up = stack.prometheus(f'count(up{{job="{job}"}} == 1)')
    total = stack.prometheus(f'count(up{{job="{job}"}})')
    return up is not None and up == total, f'count(up{{job="{job}"}} == 1) = {up} of {total}'


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keep-up", action="store_true", help="leave the stack running")
    parser.add_argument("--skip-build", action="store_true", help="use the images as they are")
    parser.add_argument(
        "--guarantee",
        choices=["at_least_once", "exactly_once"],
        default="at_least_once",
        help="the processors' PROCESSOR_GUARANTEE (default: the compose default, at_least_once)",
    )
    args = parser.parse_args(argv)

    engine = "docker" if docker_engine_answers() else "podman"
    step(f"Container engine: {engine}")
    install_packages(engine)
    if engine == "podman":
        configure_podman()
    base_images(engine)
    if not args.skip_build:
        build_images(engine)

    service = PodmanService() if engine == "podman" else None
    stack: Stack | None = None
    workdir = Path(tempfile.mkdtemp(prefix="sensorstream-compose-test-"))
    failed = False
    try:
        docker_host = service.start() if service is not None else None
        stack = Stack(engine, docker_host, workdir, args.guarantee)
        check_stack(stack)
    except CheckFailed as exc:
        failed = True
        say(f"FAILED: {exc}")
        if stack is not None:
            who = exc.service or "every service"
            say(f"---- logs of {who} ----")
            sys.stdout.write(stack.logs(exc.service, 150 if exc.service else 30))
            say("---- end of logs ----")
    except KeyboardInterrupt:
        failed = True
        say("interrupted")
    finally:
        if stack is not None and not args.keep_up:
            step("Clean-up")
            stack.remove_everything()
        if service is not None:
            if args.keep_up and stack is not None:
                say(
                    f"   left up: DOCKER_HOST={service.socket and 'unix://' + str(service.socket)}"
                    f" docker-compose -p {stack.project} ...; stop with `kill"
                    f" {service.process.pid if service.process else '?'}` when done"
                )
            else:
                service.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    if failed:
        say("compose-test: FAILED")
        return 1
    say(f"compose-test: OK in {time.monotonic() - _START:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
