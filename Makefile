# Sensorstream developer commands. `make help` lists them.
# Python runs through uv (`uv run`); Kafka is a real broker from deploy/kafka/kafkactl.

KAFKACTL := deploy/kafka/kafkactl
PYTEST_ARGS ?=
# uv from PATH, or a private copy installed from PyPI on first use (a fresh machine has none).
UV_BOOTSTRAP := .cache/uv-bootstrap/bin/uv
UV ?= $(shell command -v uv 2>/dev/null || echo $(UV_BOOTSTRAP))

.PHONY: help prereqs sync lint test chaos bench kafka-fetch kafka-start kafka-stop kafka-status kafka-logs run

help:
	@echo "make sync          install the locked environment (uv sync --locked)"
	@echo "make lint          ruff check, ruff format --check, mypy"
	@echo "make test          unit + integration tests on 2 workers (starts and stops its own Kafka)"
	@echo "make chaos         fault-injection scenarios on three brokers (~13 min; table in .cache/chaos)"
	@echo "make bench         run every benchmarks/bench_*.py in turn"
	@echo "make compose-test  docker-compose.yml for real under podman (root; ~4 min cold)"
	@echo "make kafka-start   start the local broker on 127.0.0.1:9092 (kafka-stop, kafka-status, kafka-logs)"

sync: $(UV)
	$(UV) sync --locked

$(UV_BOOTSTRAP):
	python3 -m venv .cache/uv-bootstrap
	.cache/uv-bootstrap/bin/python -m pip install --quiet uv

lint: sync
	$(UV) run ruff check .
	$(UV) run ruff format --check .
	$(UV) run mypy

# The pytest session starts its own broker on free ports and stops it at the end. Two
# workers (pytest-xdist), each with its brokers and servers, a test file per worker at a
# time: most tests wait on brokers, so the suite takes about 60% of the serial time.
# PYTEST_WORKERS=0 runs it in one process.
PYTEST_WORKERS ?= 2
test: prereqs sync kafka-fetch
	$(UV) run pytest $(if $(filter 0,$(PYTEST_WORKERS)),,-n $(PYTEST_WORKERS) --dist loadfile) $(PYTEST_ARGS)

# Fault injection on a three-broker cluster of its own; each scenario prints a row and
# the session ends with the table (also .cache/chaos/results.md and results.jsonl).
chaos: sync kafka-fetch
	$(UV) run pytest tests/chaos -s --durations=0 $(PYTEST_ARGS)

bench: sync kafka-fetch
	@set -e; for bench in benchmarks/bench_*.py; do \
		[ -e "$$bench" ] || continue; \
		echo "== $$bench"; \
		$(UV) run python "$$bench"; \
	done

kafka-fetch:
	$(KAFKACTL) fetch

# Java, Maven, Prometheus, docker-compose: apt-get installs whichever is missing.
prereqs:
	deploy/install-prereqs

# KAFKA_SECURITY=sasl_ssl adds the SASL_SSL and mTLS listeners (deploy/kafka/README.md);
# its certificates need the uv environment, the default plaintext broker only python3.
kafka-start:
ifeq ($(KAFKA_SECURITY),sasl_ssl)
	$(UV) run $(KAFKACTL) start --security sasl_ssl
else
	$(KAFKACTL) start$(if $(filter-out plaintext,$(KAFKA_SECURITY)), --security $(KAFKA_SECURITY))
endif

kafka-stop:
	$(KAFKACTL) stop

kafka-status:
	$(KAFKACTL) status

kafka-logs:
	$(KAFKACTL) logs

# ---- run: the local stack, images, compose (deploy issue; owned by deploy) -------------
# `make run` (PROCESSORS=3 make run): Kafka, topics, Prometheus, producer, processors, audit,
# Mosquitto + bridge + devices, PostgreSQL + sink (RUN_ARGS=--no-edges leaves those out)
# with a live view; Ctrl-C stops everything. `make run-stop` cleans up after a lost terminal.
PROCESSORS ?= 2
RUN_ARGS ?=
# docker when its daemon answers, else podman (no daemon needed), else docker for the error.
CONTAINER ?= $(shell docker info >/dev/null 2>&1 && echo docker || { command -v podman >/dev/null && echo podman; } || echo docker)
IMAGE_TAG ?= latest
BUILD_FORMAT := $(if $(findstring podman,$(CONTAINER)),--format docker,)

.PHONY: run run-stop images compose-config compose-secrets compose-test

run: sync
	$(UV) run python deploy/local/stack.py --processors $(PROCESSORS) $(RUN_ARGS)

run-stop: sync
	$(UV) run python deploy/local/stack.py stop

# podman needs --format docker, or its OCI images silently lose HEALTHCHECK.
images:
	$(CONTAINER) build $(BUILD_FORMAT) -f services/producer/Dockerfile -t sensorstream-producer:$(IMAGE_TAG) .
	$(CONTAINER) build $(BUILD_FORMAT) -f services/processor/Dockerfile -t sensorstream-processor:$(IMAGE_TAG) .
	$(CONTAINER) build $(BUILD_FORMAT) -f services/bridge/Dockerfile -t sensorstream-bridge:$(IMAGE_TAG) .
	$(CONTAINER) build $(BUILD_FORMAT) -f services/sink/Dockerfile -t sensorstream-sink:$(IMAGE_TAG) .
	$(CONTAINER) build $(BUILD_FORMAT) -f deploy/compose/kafka/Dockerfile -t localhost/sensorstream-kafka:4.1.1 .
	$(CONTAINER) build $(BUILD_FORMAT) -f deploy/compose/mosquitto/Dockerfile -t localhost/sensorstream-mosquitto:debian .
	$(CONTAINER) build $(BUILD_FORMAT) -f deploy/compose/postgres/Dockerfile -t localhost/sensorstream-postgres:debian .
	$(CONTAINER) build $(BUILD_FORMAT) -f deploy/compose/prometheus/Dockerfile -t localhost/sensorstream-prometheus:debian .

compose-config:
	docker-compose -f docker-compose.yml config -q

# The passwords of docker-compose.secure.yml, one random password per file, made once and
# never overwritten (the broker keeps the SASL password it was first formatted with). The
# files are 0644 in a 0700 directory: deploy/compose/secrets/README.md says why.
compose-secrets:
	@mkdir -p deploy/compose/secrets && chmod 0700 deploy/compose/secrets
	@set -e; for name in sasl_password metrics_password postgres_password mqtt_password; do \
		file=deploy/compose/secrets/$$name; \
		if [ -e "$$file" ]; then echo "$$file: exists, kept"; continue; fi; \
		password=$$(python3 -c 'import secrets; print(secrets.token_urlsafe(32))'); \
		(set -C; umask 077; printf '%s\n' "$$password" > "$$file"); \
		chmod 0644 "$$file"; \
		echo "$$file: made"; \
	done
# The compose stack for real (deploy/compose/compose_test.py): installs podman if there is
# no Docker engine, makes the base image without a registry (once), builds every image,
# brings docker-compose.yml up through podman's Docker API and checks topics, readings,
# /readyz, Prometheus, --scale 3 and 1, the audit, the MQTT -> PostgreSQL path, a clean stop
# and down -v. Needs root (apt-get, podman); ~8 min cold, ~2 min warm on 2 cores.
compose-test: sync
	$(UV) run python deploy/compose/compose_test.py $(COMPOSE_TEST_ARGS)
# ---- end run ---------------------------------------------------------------------------
