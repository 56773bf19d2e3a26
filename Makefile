# The project's public interface. `make help` lists the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help
STACK := deploy/local/stack.sh

.PHONY: help sim test bench eval scaling recogym ope ope-obp ope-fashion libtorch stack-up stack-down stack-status stack-logs stack-reset schemas lint compose-check build k8s-check

help: ## list the targets
	@grep -hE '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

sim: ## the main job: a full simulation (DATASET, EPISODES, POLICY, TRANSPORT=kafka|memory, REPLICAS, LEARNING=shared|local)
	@scripts/sim.sh

test: ## everything: install what is missing, start the stack if needed, run all tests, stop what it started
	@scripts/test.sh

libtorch: ## libtorch for tch (the PyPI torch wheel, cached under ~/.cache/streamrec)
	@scripts/libtorch.sh

build: libtorch ## build every crate (debug)
	cargo build --workspace --all-targets

stack-up: ## start ZooKeeper, 3 Kafka brokers, the schema registry, Cassandra and Prometheus on 127.0.0.1
	@$(STACK) up

stack-down: ## stop every process of the stack, by pid
	@$(STACK) down

stack-status: ## one JSON object describing the running stack
	@$(STACK) status

stack-logs: ## the last lines of every service's log
	@$(STACK) logs

stack-reset: ## stop the stack and wipe its data
	@$(STACK) reset

schemas: libtorch ## regenerate protocol/schemas/*.json from the Rust message types
	STREAMREC_BLESS=1 cargo test -p streamrec-tests --test config_sources -- schema_files_match_the_rust_types

lint: libtorch ## rustfmt and clippy, warnings are errors
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings

compose-check: ## validate docker-compose.yml without a Docker engine
	@deploy/tools/compose-check.sh

k8s-check: ## validate deploy/k8s (both overlays) against a real kube-apiserver on 127.0.0.1, and against compose and the local stack
	@scripts/k8s-check.sh

eval: ## train each policy on train users, evaluate on test users: target/eval/report.json + PNG (SIZE=full: the full-size set, target/eval-full/)
	@scripts/eval.sh

scaling: ## sample efficiency: one learner for 1 or 3 replicas vs 3 replicas learning alone, evaluated frozen on held-out users: target/scaling/report.json
	@scripts/scaling.sh

recogym: ## RecoGym A/B test through the pipeline (paper's Table 1/Fig 4): target/recogym/ab.json + PNG
	@scripts/recogym.sh

ope: ## off-policy evaluation on the archive checked against A/B truth on RecoGym: target/ope/ope-recogym.json + PNGs
	@scripts/ope.sh

ope-obp: ## cross-check the estimates of `make ope` against the Open Bandit Pipeline (Python 3.10 venv)
	@scripts/ope_obp.sh

ope-fashion: ## off-policy evaluation on the archive checked against the exact truth of the fashion replay env: target/ope-fashion/ope-fashion.json + PNGs
	@scripts/ope_fashion.sh

bench: ## benchmarks with baselines in the same run; writes target/bench/report.json
	@scripts/bench.sh
