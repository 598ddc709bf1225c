"""The pipeline over a secure broker, and the refusals a user meets on the way there.

A broker of the test's own (``secure_kafka``) has three listeners: PLAINTEXT (used here
only to create topics and to read the results independently), SASL_SSL with SCRAM and
PLAIN users, and SSL that requires a client certificate. The producer and the processor
run as real processes with their secrets in files; every run ends with the audit's
per-sensor ``seq`` accounting.

Each refusal must end start-up at once with exit 1 and one line that says what was
refused and which setting to check, never a traceback and never after the whole
``--startup-timeout`` (60 s here; the tests allow 30).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import certs
import pytest
import structlog.testing
from processor_support import (
    Topics,
    free_port,
    make_input,
    seq_ledger,
    start_processor,
    stop_all,
    wait_until,
)
from prometheus_client import CollectorRegistry

from kafka_helpers import consume_all
from kafka_security import SecureKafka
from sensorstream.producer._service import ProducerService
from sensorstream.producer.settings import ProducerSettings
from sensorstream.runtime import StopSignal, load_settings
from sensorstream.schema import SensorReading, decode_reading

SENSORS = 12
COUNT = 600
REFUSAL_BUDGET = 30.0  # well below --startup-timeout 60: a refusal is not retried


def sasl_env(kafka: SecureKafka, mechanism: str = "SCRAM-SHA-512") -> dict[str, str]:
    return {
        "SENSORSTREAM_SECURITY_PROTOCOL": "SASL_SSL",
        "SENSORSTREAM_SASL_MECHANISM": mechanism,
        "SENSORSTREAM_SASL_USERNAME": kafka.username,
        "SENSORSTREAM_SASL_PASSWORD_FILE": str(kafka.password_file),
        "SENSORSTREAM_SSL_CAFILE": str(kafka.ca_file),
    }


def mtls_env(kafka: SecureKafka) -> dict[str, str]:
    return {
        "SENSORSTREAM_SECURITY_PROTOCOL": "SSL",
        "SENSORSTREAM_SSL_CAFILE": str(kafka.ca_file),
        "SENSORSTREAM_SSL_CERTFILE": str(kafka.client_certfile),
        "SENSORSTREAM_SSL_KEYFILE": str(kafka.client_keyfile),
        "SENSORSTREAM_SSL_KEY_PASSWORD_FILE": str(kafka.client_key_password_file),
    }


def secrets_of(kafka: SecureKafka) -> list[str]:
    return [
        kafka.password_file.read_text().strip(),
        kafka.client_key_password_file.read_text().strip(),
    ]


async def run_producer(
    bootstrap: str, topic: str, env: dict[str, str], *argv: str, within: float = 60.0
) -> tuple[int, str, float]:
    """``sensorstream-producer`` to completion: exit status, stderr, seconds taken."""
    started = time.monotonic()
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "sensorstream.producer",
        "--bootstrap-servers", bootstrap, "--topic", topic,
        "--metrics-port", str(free_port()), "--log-format", "json",
        "--startup-timeout", "60", *argv,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1", **env},
    )  # fmt: skip
    _, err = await asyncio.wait_for(process.communicate(), within)
    assert process.returncode is not None
    return process.returncode, err.decode(errors="replace"), time.monotonic() - started


def proc_view(pid: int) -> dict[str, bytes]:
    """What any user on the host can read of a process (cmdline), and its owner (environ)."""
    return {name: Path(f"/proc/{pid}/{name}").read_bytes() for name in ("cmdline", "environ")}


def error_lines(stderr: str, prog: str = "sensorstream-producer") -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith(f"{prog}: error: ")]


class TestPipelineOverTls:
    @pytest.mark.parametrize("how", ["sasl_ssl", "mtls"])
    async def test_every_reading_reaches_one_aggregate_and_no_secret_shows(
        self, secure_kafka: SecureKafka, tmp_path: Path, how: str
    ) -> None:
        """Producer -> processor -> aggregates over SASL_SSL/SCRAM-SHA-512, or over mutual
        TLS with an encrypted client key: the audit finds every seq of every sensor in
        exactly one aggregate. The secrets, given by file, are in no process's command
        line or environment, in no log line and in no metric."""
        topics = Topics.fresh(f"sec-{how}")
        await make_input(secure_kafka.bootstrap, topics)
        if how == "sasl_ssl":
            bootstrap, env = secure_kafka.sasl_ssl_bootstrap, sasl_env(secure_kafka)
        else:
            bootstrap, env = secure_kafka.ssl_bootstrap, mtls_env(secure_kafka)
        processor = start_processor(bootstrap, topics, tmp_path, **env)
        try:
            await processor.wait_ready()
            proc_files = proc_view(processor.pid)
            metrics = processor.get("/metrics")[1]
            status, err, _ = await run_producer(
                bootstrap, topics.input, env,
                "--count", str(COUNT), "--sensors", str(SENSORS), "--rate", "300",
            )  # fmt: skip
            assert 0 == status, err[-3000:]

            async def accounted() -> int:
                ledger = await seq_ledger(secure_kafka.bootstrap, topics)
                return ledger.report.totals.aggregated

            await wait_until(accounted, lambda n: n >= COUNT, within=60, what="every reading")
            ledger = await seq_ledger(secure_kafka.bootstrap, topics)
            assert (COUNT, {}) == (ledger.report.totals.produced, ledger.problems())
            assert SENSORS == len(ledger.produced)
        finally:
            await processor.terminate()
            stop_all([processor])

        seen = {
            "processor log": processor.logs(),
            "producer log": err,
            "metrics": metrics,
            **{k: v.decode(errors="replace") for k, v in proc_files.items()},
        }
        leaked = {
            where: "a secret"
            for where, text in seen.items()
            for secret in secrets_of(secure_kafka)
            if secret in text
        }
        assert {} == leaked
        # The settings line shows where the secrets came from, masked values and all.
        assert (
            str(
                env.get(
                    "SENSORSTREAM_SASL_PASSWORD_FILE", env.get("SENSORSTREAM_SSL_KEY_PASSWORD_FILE")
                )
            )
            in processor.logs()
        )

    @pytest.mark.parametrize("mechanism", ["SCRAM-SHA-256", "PLAIN"])
    async def test_the_other_sasl_mechanisms(
        self, secure_kafka: SecureKafka, mechanism: str
    ) -> None:
        """SCRAM-SHA-256 and PLAIN (over TLS) work as well: every reading is on the topic."""
        topics = Topics.fresh(f"sec-{mechanism.lower()}")
        await make_input(secure_kafka.bootstrap, topics)

        status, err, _ = await run_producer(
            secure_kafka.sasl_ssl_bootstrap, topics.input, sasl_env(secure_kafka, mechanism),
            "--count", "120", "--sensors", "4", "--rate", "200",
        )  # fmt: skip

        seqs: dict[str, list[int]] = {}
        for record in await consume_all(secure_kafka.bootstrap, topics.input):
            reading = decode_reading(record.value)
            assert isinstance(reading, SensorReading), reading
            seqs.setdefault(reading.sensor_id, []).append(reading.seq)
        assert (0, {f"sensor-{s:04d}": list(range(30)) for s in range(4)}) == (
            status,
            {sensor: sorted(got) for sensor, got in seqs.items()},
        ), err[-2000:]


@contextlib.asynccontextmanager
async def forwarder(host: str, target: str) -> AsyncIterator[str]:
    """A TCP forwarder on ``host`` to ``target`` (host:port): the broker reached by an
    address its certificate does not name."""
    target_host, _, target_port = target.rpartition(":")

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(target_host, int(target_port))
        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    server = await asyncio.start_server(serve, host, 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"{host}:{port}"
    finally:
        server.close()


class TestRefusals:
    @pytest.mark.parametrize(
        ("case", "expected", "setting"),
        [
            ("wrong password", "authentication failed", "SENSORSTREAM_SASL_PASSWORD_FILE"),
            ("unknown user", "authentication failed", "SENSORSTREAM_SASL_USERNAME"),
            ("PLAIN, wrong password", "authentication failed", "SENSORSTREAM_SASL_PASSWORD"),
            ("another CA", "certificate not trusted", "SENSORSTREAM_SSL_CAFILE"),
            ("host name not in the certificate", "host name mismatch", "BOOTSTRAP_SERVERS"),
            ("expired client certificate", "client certificate refused", "SSL_CERTFILE"),
            ("client certificate of another CA", "client certificate refused", "SSL_CERTFILE"),
            ("no client certificate", "client certificate required", "SSL_CERTFILE"),
            ("TLS against the plaintext port", "no TLS at", "SECURITY_PROTOCOL"),
        ],
    )
    async def test_exit_1_at_once_with_one_line(
        self,
        secure_kafka: SecureKafka,
        tmp_path: Path,
        case: str,
        expected: str,
        setting: str,
    ) -> None:
        """Each refusal: exit 1 within seconds, one line saying which, naming the
        setting to check; no traceback, and not aiokafka's retry noise."""
        k = secure_kafka
        bootstrap, env = k.sasl_ssl_bootstrap, sasl_env(k)
        wrong = tmp_path / "wrong-password"
        wrong.write_text("not-the-password")
        async with contextlib.AsyncExitStack() as stack:
            if case == "wrong password":
                env["SENSORSTREAM_SASL_PASSWORD_FILE"] = str(wrong)
            elif case == "unknown user":
                env["SENSORSTREAM_SASL_USERNAME"] = "nobody"
            elif case == "PLAIN, wrong password":
                env |= {"SENSORSTREAM_SASL_MECHANISM": "PLAIN"}
                env["SENSORSTREAM_SASL_PASSWORD_FILE"] = str(wrong)
            elif case == "another CA":
                other_ca = certs.create_ca(tmp_path / "other-ca", "Some other CA")
                env["SENSORSTREAM_SSL_CAFILE"] = str(other_ca.certfile)
            elif case == "host name not in the certificate":
                bootstrap = await stack.enter_async_context(
                    forwarder("127.0.0.2", k.sasl_ssl_bootstrap.split(",")[0])
                )
            elif case == "TLS against the plaintext port":
                bootstrap = k.bootstrap
            else:
                bootstrap, env = k.ssl_bootstrap, mtls_env(k)
                if case == "no client certificate":
                    for name in ("CERTFILE", "KEYFILE", "KEY_PASSWORD_FILE"):
                        del env[f"SENSORSTREAM_SSL_{name}"]
                else:
                    cert, key = k.issue_client_certificate(
                        tmp_path, expired=case.startswith("expired"), other_ca="another" in case
                    )
                    env |= {
                        "SENSORSTREAM_SSL_CERTFILE": str(cert),
                        "SENSORSTREAM_SSL_KEYFILE": str(key),
                    }
                    del env["SENSORSTREAM_SSL_KEY_PASSWORD_FILE"]

            status, err, elapsed = await run_producer(
                bootstrap, "sensor-readings", env, within=REFUSAL_BUDGET
            )

        lines = error_lines(err)
        assert (1, 1) == (status, len(lines)), err[-3000:]
        assert (True, True) == (expected in lines[0], setting in lines[0]), lines[0]
        assert ("Traceback" in err, "Unable connect" in err) == (False, False), err[-3000:]
        assert elapsed < REFUSAL_BUDGET

    async def test_the_processor_refuses_the_same_way(
        self, secure_kafka: SecureKafka, tmp_path: Path
    ) -> None:
        """The processor shares the check: a wrong password is one line and exit 1."""
        wrong = tmp_path / "wrong-password"
        wrong.write_text("not-the-password")
        env = sasl_env(secure_kafka) | {"SENSORSTREAM_SASL_PASSWORD_FILE": str(wrong)}
        processor = start_processor(
            secure_kafka.sasl_ssl_bootstrap, Topics.fresh("sec-refused"), tmp_path, **env
        )
        try:
            status = await asyncio.to_thread(processor.proc.wait, REFUSAL_BUDGET)
        finally:
            stop_all([processor])
        lines = error_lines(processor.logs(), "sensorstream-processor")
        assert (1, 1) == (status, len(lines)), processor.logs()[-3000:]
        assert "authentication failed" in lines[0]


class TestNothingSecretReachesTheLogger:
    async def test_a_secure_run_hands_the_logger_no_secret(
        self, secure_kafka: SecureKafka, tmp_path: Path
    ) -> None:
        """A whole producer run over SASL_SSL in this process, every structlog call
        captured *before* any redaction (``capture_logs`` replaces the processors): our
        code never passes the password itself to the logger, masked or not; the redaction
        is the second line of defence, not the only one."""
        topics = Topics.fresh("sec-capture")
        await make_input(secure_kafka.bootstrap, topics)
        settings = load_settings(
            ProducerSettings,
            [
                "--bootstrap-servers", secure_kafka.sasl_ssl_bootstrap,
                "--topic", topics.input, "--metrics-port", "0",
                "--security-protocol", "SASL_SSL", "--sasl-mechanism", "SCRAM-SHA-512",
                "--sasl-username", secure_kafka.username,
                "--sasl-password-file", str(secure_kafka.password_file),
                "--ssl-cafile", str(secure_kafka.ca_file),
                "--count", "100", "--sensors", "5", "--rate", "200",
                "--summary-interval", "0.2",
            ],
        )  # fmt: skip
        service = ProducerService(settings, StopSignal(), registry=CollectorRegistry())

        with structlog.testing.capture_logs() as captured:
            status = await asyncio.wait_for(service.run(), 60)

        events = {entry["event"] for entry in captured}
        assert (0, True) == (status, {"producer_starting", "producer_stopped"} <= events), events
        assert [] == [e["event"] for e in captured if secure_kafka.password in repr(e)]
