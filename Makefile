ROOT := $(patsubst %/,%,$(dir $(abspath $(lastword $(MAKEFILE_LIST)))))
STACK := bash $(ROOT)/docker/stack.sh

.DEFAULT_GOAL := help
.PHONY: help up down status

help: ## Show the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z0-9_-]+:.*## / {printf "  %-10s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

up: ## Install what is missing and start MariaDB, ZooKeeper and Kafka on 127.0.0.1
	@$(STACK) up

down: ## Stop the local stack
	@$(STACK) down

status: ## Show what runs in the local stack
	@$(STACK) status
