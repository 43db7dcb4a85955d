ROOT := $(patsubst %/,%,$(dir $(abspath $(lastword $(MAKEFILE_LIST)))))
STACK := bash $(ROOT)/docker/stack.sh
VENV := $(ROOT)/.venv
PY := $(VENV)/bin/python

.DEFAULT_GOAL := help
.PHONY: help up down status venv demo test lint bench soak cluster-test proof

help: ## Show the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z0-9_-]+:.*## / {printf "  %-10s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

up: ## Install what is missing and start MariaDB, ZooKeeper, Kafka, MySQL 8.0 and MariaDB 11.4 on 127.0.0.1
	@$(STACK) up

down: ## Stop the local stack
	@$(STACK) down

status: ## Show what runs in the local stack
	@$(STACK) status

venv: $(VENV)/.installed ## Create .venv with the pinned Python dependencies

$(VENV)/.installed: $(ROOT)/requirements.lock $(ROOT)/requirements-dev.lock $(ROOT)/pyproject.toml
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --disable-pip-version-check -r $(ROOT)/requirements-dev.lock
	$(VENV)/bin/pip install -q --disable-pip-version-check --no-deps -e $(ROOT)
	touch $@

demo: up venv ## Run a worker on a sample database with a load generator; watch events flow
	cd $(ROOT) && $(PY) -m demo.run

test: up venv ## Run the unit tier, then the tests against the local stack
	cd $(ROOT) && $(PY) -m pytest -m "not stack"
	cd $(ROOT) && $(PY) -m pytest -m "stack and not proof"

proof: up venv ## The snapshot proof alone: 1,000,000 rows snapshotted twice under writes and kill -9s (AESOP_PROOF_ROWS=...)
	cd $(ROOT) && $(PY) -m pytest -s -m proof

lint: venv ## ruff lint and format check, mypy
	cd $(ROOT) && $(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .
	cd $(ROOT) && $(VENV)/bin/mypy app tables relay agents web metrics

bench: up venv ## Run the relay, consumer, latency and snapshot benchmarks (figures as ratios to baselines)
	cd $(ROOT) && flock /tmp/aesop-stack.lock $(PY) -m bench.relay_bench
	cd $(ROOT) && flock /tmp/aesop-stack.lock $(PY) -m bench.consumer_bench
	cd $(ROOT) && flock /tmp/aesop-stack.lock $(PY) -m bench.latency_bench
	cd $(ROOT) && flock /tmp/aesop-stack.lock $(PY) -m bench.snapshot_bench

soak: up venv ## Seeded chaos soak: faults under load, then nothing lost (ARGS="--minutes 6 --seed 1")
	cd $(ROOT) && $(PY) -m bench.soak $(ARGS)

cluster-test: venv ## The Ansible playbooks on 10 namespace hosts, then faults; nothing lost (ARGS="--seed 1")
	cd $(ROOT) && bash deploy/test/run.sh $(ARGS)
