"""Write docs/settings.md from the settings models, so the tables can never drift.

    uv run python docs/settings.py          # rewrite docs/settings.md
    uv run python docs/settings.py --check  # exit 1 if it is out of date (a test checks it)

Every field of ``ProducerSettings``, ``ProcessorSettings``, ``TopicsSettings`` and
``AuditSettings`` becomes a row: flag, environment variable, default, description (the
same text ``--help`` shows).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pydantic_settings import BaseSettings

from sensorstream.audit.settings import AuditSettings
from sensorstream.processor.settings import ProcessorSettings
from sensorstream.producer.settings import ProducerSettings
from sensorstream.runtime import ENV_PREFIX, ServiceSettings
from sensorstream.runtime.topics import TopicsSettings

TARGET = Path(__file__).with_name("settings.md")
COMMON = set(ServiceSettings.model_fields)

INTRO = """\
# Settings

Every setting of every command is a CLI flag and an environment variable
`SENSORSTREAM_<NAME>` (the flag wins over the variable, the variable over the default);
`--help` lists the same text. Boolean flags take the `--no-` form too
(`--no-idempotence`). A bad value exits with status 2 and one line naming the flag, the
variable and what would be valid — no traceback:

```
$ sensorstream-producer --rate -5
sensorstream-producer: error: invalid setting --rate / SENSORSTREAM_RATE (got '-5'): ...
```

Exit statuses of the services: 0 a clean stop; 1 a fatal runtime error (Kafka
unreachable after `--startup-timeout`, failed authentication, a retriable error that
outlasted `--retry-budget`, unacknowledged events at shutdown, a shutdown that ran past
`--shutdown-timeout`, a broker that refused the credentials), one line on stderr; 2 a bad
setting. Every secret has a `-file` form (`--sasl-password-file`), which keeps it out of
`/proc/<pid>/cmdline`; secrets are masked in every log line; SSL always checks host names
([security](security.md)).

This page is generated from the settings models (`uv run python docs/settings.py`); a test
keeps it up to date.
"""


def _default(name: str, cls: type[BaseSettings]) -> str:
    field = cls.model_fields[name]
    if field.default_factory is not None:
        return "hostname-pid" if name == "instance_id" else "(computed)"
    value = field.default
    return "—" if value is None else f"`{value}`"


def _description(text: str | None) -> str:
    text = (text or "").split(" [env: ")[0]
    return text.replace("|", "\\|")


def table(cls: type[BaseSettings], *, names: list[str]) -> str:
    rows = ["| flag | environment variable | default | description |", "|---|---|---|---|"]
    for name in names:
        field = cls.model_fields[name]
        flag = "--" + name.replace("_", "-")
        env = f"{ENV_PREFIX}{name.upper()}"
        default = _default(name, cls)
        rows.append(f"| `{flag}` | `{env}` | {default} | {_description(field.description)} |")
    return "\n".join(rows)


def render() -> str:
    sections = [INTRO]
    common = [n for n in ProducerSettings.model_fields if n in COMMON and n != "metrics_port"]
    sections.append(
        "## Common to every command\n\nKafka connection, observability and lifecycle, "
        "the same in the producer, the processor and `sensorstream-topics`.\n\n"
        + table(ProcessorSettings, names=common)
    )
    for title, cls, about in (
        (
            "sensorstream-producer",
            ProducerSettings,
            "The simulated fleet, its rate and the Kafka producer ([producer.md](producer.md)).",
        ),
        (
            "sensorstream-processor",
            ProcessorSettings,
            "Group, windows, alerts, delivery, robustness and fetching "
            "([processor.md](processor.md)).",
        ),
        (
            "sensorstream-topics",
            TopicsSettings,
            "Create, check and fix the declared topics ([operations.md](operations.md#topics)).",
        ),
        (
            "sensorstream-audit",
            AuditSettings,
            "Which pipeline to audit, over what range, and how to report ([audit.md](audit.md)).",
        ),
    ):
        own = [
            name
            for name in cls.model_fields
            if name not in COMMON
            or (name in ("metrics_port", "log_level") and cls is AuditSettings)
            or (name == "metrics_port" and cls is not TopicsSettings)
        ]
        sections.append(f"## {title}\n\n{about}\n\n" + table(cls, names=own))
    return "\n\n".join(sections) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if settings.md is stale")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        if TARGET.read_text() != text:
            sys.stderr.write(f"{TARGET} is out of date: run uv run python docs/settings.py\n")
            return 1
        return 0
    TARGET.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
