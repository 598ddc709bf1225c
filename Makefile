# Sensorstream developer commands. `make help` lists them.
# Python runs through uv (`uv run`); Kafka is a real broker from deploy/kafka/kafkactl.

KAFKACTL := deploy/kafka/kafkactl
PYTEST_ARGS ?=

.PHONY: help sync lint test bench kafka-fetch kafka-start kafka-stop kafka-status kafka-logs run

help:
	@echo "make sync          install the locked environment (uv sync --locked)"
	@echo "make lint          ruff check, ruff format --check, mypy"
	@echo "make test          unit + integration tests (starts and stops its own Kafka)"
	@echo "make bench         run every benchmarks/bench_*.py in turn"
	@echo "make kafka-start   start the local broker on 127.0.0.1:9092 (kafka-stop, kafka-status, kafka-logs)"

sync:
	uv sync --locked

lint:
	uv run ruff check .
	uv run ruff format --check .
	uv run mypy

# The pytest session starts its own broker on free ports and stops it at the end.
test: kafka-fetch
	uv run pytest $(PYTEST_ARGS)

bench:
	@set -e; for bench in benchmarks/bench_*.py; do \
		[ -e "$$bench" ] || continue; \
		echo "== $$bench"; \
		uv run python "$$bench"; \
	done

kafka-fetch:
	$(KAFKACTL) fetch

kafka-start:
	$(KAFKACTL) start

kafka-stop:
	$(KAFKACTL) stop

kafka-status:
	$(KAFKACTL) status

kafka-logs:
	$(KAFKACTL) logs

# ---- run: the local stack, images, compose (deploy issue; owned by deploy) -------------
# `make run` (PROCESSORS=3 make run): Kafka, topics, Prometheus, producer and processors
# with a live view; Ctrl-C stops everything. `make run-stop` cleans up after a lost terminal.
PROCESSORS ?= 2
RUN_ARGS ?=
# docker when its daemon answers, else podman (no daemon needed), else docker for the error.
CONTAINER ?= $(shell docker info >/dev/null 2>&1 && echo docker || { command -v podman >/dev/null && echo podman; } || echo docker)
IMAGE_TAG ?= latest
BUILD_FORMAT := $(if $(findstring podman,$(CONTAINER)),--format docker,)

.PHONY: run run-stop images compose-config

run:
	uv sync --locked
	uv run python deploy/local/stack.py --processors $(PROCESSORS) $(RUN_ARGS)

run-stop:
	uv run python deploy/local/stack.py stop

# podman needs --format docker, or its OCI images silently lose HEALTHCHECK.
images:
	$(CONTAINER) build $(BUILD_FORMAT) -f services/producer/Dockerfile -t sensorstream-producer:$(IMAGE_TAG) .
	$(CONTAINER) build $(BUILD_FORMAT) -f services/processor/Dockerfile -t sensorstream-processor:$(IMAGE_TAG) .
	$(CONTAINER) build $(BUILD_FORMAT) -f deploy/compose/kafka/Dockerfile -t localhost/sensorstream-kafka:4.1.1 .

compose-config:
	docker-compose -f docker-compose.yml config -q
# ---- end run ---------------------------------------------------------------------------
