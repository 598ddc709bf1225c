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

# ---- run: the local stack (producer + processor against the local broker) ----------
# Added by the local-stack issue.
run:
	@echo "make run: not there yet" >&2; exit 1
# ---- end run ---------------------------------------------------------------------------
