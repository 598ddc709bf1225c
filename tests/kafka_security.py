"""A secure test broker as its clients see it: addresses, CA, client certificate, password.

``SecureKafka`` is what the ``secure_kafka`` (one node) and ``secure_kafka_cluster`` (three
nodes) fixtures return. Every broker has three client listeners: PLAINTEXT (``bootstrap``,
for setting up topics), SASL_SSL (``sasl_ssl_bootstrap``: SCRAM-SHA-512, SCRAM-SHA-256,
PLAIN) and SSL with a required client certificate (``ssl_bootstrap``). The files are the
broker's own, under its data dir (``kafkactl.SecurityFiles``); nothing here is a fixed
secret. The ``*_client_config`` methods give aiokafka keyword arguments built with
``aiokafka.helpers.create_ssl_context``, which always checks the broker's host name::

    producer = AIOKafkaProducer(
        bootstrap_servers=secure_kafka.sasl_ssl_bootstrap,
        **secure_kafka.sasl_ssl_client_config("SCRAM-SHA-256"),
    )
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import certs
import kafkactl
from aiokafka.helpers import create_ssl_context

__all__ = ["SecureKafka"]


@dataclass(frozen=True)
class SecureKafka:
    """The client's view of a broker started with ``security="sasl_ssl"``."""

    bootstrap: str
    sasl_ssl_bootstrap: str
    ssl_bootstrap: str
    security_dir: Path
    ca_file: Path
    client_certfile: Path
    client_keyfile: Path
    client_key_password_file: Path
    username: str
    password_file: Path

    @classmethod
    def of(cls, cluster: kafkactl.KafkaCluster) -> SecureKafka:
        """The view of ``cluster``, which must have been started with security."""
        if cluster.security_dir is None:
            raise ValueError(f"the cluster at {cluster.data_dir} runs without security")
        files = kafkactl.SecurityFiles(cluster.security_dir)
        return cls(
            bootstrap=cluster.bootstrap,
            sasl_ssl_bootstrap=cluster.sasl_ssl_bootstrap,
            ssl_bootstrap=cluster.ssl_bootstrap,
            security_dir=files.directory,
            ca_file=files.ca_file,
            client_certfile=files.client_certfile,
            client_keyfile=files.client_keyfile,
            client_key_password_file=files.client_key_password_file,
            username=kafkactl.SASL_USERNAME,
            password_file=files.password_file,
        )

    @property
    def password(self) -> str:
        """The SASL password of ``username`` (SCRAM and PLAIN alike)."""
        return self.password_file.read_text()

    @property
    def client_key_password(self) -> str:
        return self.client_key_password_file.read_text()

    def sasl_ssl_client_config(
        self,
        mechanism: str = "SCRAM-SHA-512",
        *,
        username: str | None = None,
        password: str | None = None,
    ) -> dict[str, Any]:
        """aiokafka arguments for the SASL_SSL listener (``username``/``password`` override)."""
        return {
            "security_protocol": "SASL_SSL",
            "ssl_context": create_ssl_context(cafile=self.ca_file),
            "sasl_mechanism": mechanism,
            "sasl_plain_username": self.username if username is None else username,
            "sasl_plain_password": self.password if password is None else password,
        }

    def ssl_client_config(
        self, certfile: Path | None = None, keyfile: Path | None = None
    ) -> dict[str, Any]:
        """aiokafka arguments for the mTLS listener: the broker's client certificate, or this one.

        ``certfile``/``keyfile`` (an unencrypted key, as ``issue_client_certificate`` makes)
        replace the broker's own client certificate.
        """
        if certfile is None:
            context = create_ssl_context(
                cafile=self.ca_file,
                certfile=self.client_certfile,
                keyfile=self.client_keyfile,
                password=self.client_key_password,
            )
        else:
            context = create_ssl_context(cafile=self.ca_file, certfile=certfile, keyfile=keyfile)
        return {"security_protocol": "SSL", "ssl_context": context}

    def issue_client_certificate(
        self, out_dir: Path, *, expired: bool = False, other_ca: bool = False
    ) -> tuple[Path, Path]:
        """A new client certificate and its unencrypted key in ``out_dir``: (certfile, keyfile).

        Signed by the broker's CA and valid for the next days, unless ``expired`` (it ended
        yesterday) or ``other_ca`` (signed by a CA of its own that the broker never saw).
        """
        ca: certs.CertificateAuthority | Path = self.security_dir
        if other_ca:
            ca = certs.create_ca(out_dir / "other-ca", "Some other CA")
        not_valid_after = None
        if expired:
            not_valid_after = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=1)
        # Never "client": out_dir may be the security dir, whose client.pem the broker's own.
        name = "issued-client" + ("-expired" if expired else "") + ("-other-ca" if other_ca else "")
        issued = certs.issue_certificate(
            ca, out_dir, name, client=True, not_valid_after=not_valid_after
        )
        return issued.certfile, issued.keyfile
