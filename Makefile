# `make run` and `make test` do all set-up on a fresh machine: virtualenv, install, then the job.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# pip on this machine prints a warning per package for the mirror's missing index folders.
PIP_QUIET := grep -v "is ignored: it is neither a file nor a directory" || true

.PHONY: run test install bench clean lint stack stack-down deploy-team

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install -q -e '.[dev]' 2>&1 | $(PIP_QUIET)
	$(BIN)/python -c "import fraudguard, torch, mlflow, prefect, dvc, art, evidently"
	touch $@

# Prefect's schema, migrated once: `fraudguard run` copies it into each new project's Prefect home.
# Only a speed-up: when it cannot be made, `fraudguard run` lets Prefect create its database as before.
$(VENV)/.prefect-db: $(VENV)/.installed
	if $(BIN)/python -m fraudguard.prefect_database create; then touch $@; \
	else echo "warning: no Prefect database template (fraudguard run will migrate a new one itself)"; fi

install: $(VENV)/.installed $(VENV)/.prefect-db

run: install
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/fraudguard run

# Two pytest-xdist workers, each taking whole test modules (their module fixtures, e.g. the team stack, start
# once); TEST_WORKERS=0 runs the suite in this one process. The 15 slowest tests are listed at the end: the
# suite's budget is 20 minutes on 2 cores, and CI's log is where a test that grew shows first.
TEST_WORKERS ?= 2

test: install
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile --durations=15

lint: install
	$(BIN)/ruff check src flows tests bench
	$(BIN)/mypy

bench: install
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python bench/run_all.py

# --- Team stack on this machine (docs/team.md): PostgreSQL, MLflow (basic-auth), Prefect, two workers -----
# Started on 127.0.0.1, stopped by PID; secrets in $(STACK_DIR)/secrets (never in git).
STACK_DIR ?= .stack
# The reviewed repository the workers clone (no default: this checkout would ship local commits nobody reviewed to
# workers that hold the signing key).
GIT_REMOTE ?=

stack: install
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m fraudguard.stack up --dir $(STACK_DIR)

stack-down:
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m fraudguard.stack down --dir $(STACK_DIR)

# The flows as deployments whose workers clone $(GIT_REMOTE) (prefect.team.yaml); needs a running stack.
deploy-team: install
	@if [ -z "$$GIT_REMOTE" ]; then echo "deploy-team: set GIT_REMOTE=<the reviewed git URL the workers clone>" >&2; exit 2; fi
	set -a; . $(STACK_DIR)/secrets/pipeline.env; set +a; \
	FRAUDGUARD_GIT_REMOTE="$$GIT_REMOTE" PATH="$(abspath $(BIN)):$$PATH" \
	  $(BIN)/prefect --no-prompt deploy --all --prefect-file prefect.team.yaml

clean:
	rm -rf $(VENV) data/validated data/quarantine data/features models reports

# --- Pull-request CI (.github/workflows/pull-request.yml calls exactly these) ----------------------
# On a laptop: `make ci-report BASE_REF=main` after a `dvc repro` / `fraudguard promote --dry-run`.
# ci-profile rewrites params.yaml (CI's checkout is throwaway): run it only in a scratch clone.
FG := PATH="$(abspath $(BIN)):$$PATH" $(BIN)/fraudguard
DVC := PATH="$(abspath $(BIN)):$$PATH" $(BIN)/dvc
BASE_REF ?= HEAD
HEAD_REV ?=
CI_PROFILE ?= params.ci.yaml
GATE_DIR ?= reports/gates
BASE_METRICS_DIR ?= reports/ci-base

.PHONY: bandit ci-profile ci-pipeline ci-gates ci-base ci-report

bandit: install
	$(FG) ci bandit --out-dir reports

# These values come from the workflow (branch names among them): they reach the commands through the environment
# and are quoted there, never pasted into the recipe's shell line (a base branch named `main;id` ran `id`).
export BASE_REF HEAD_REV CI_PROFILE GATE_DIR BASE_METRICS_DIR GIT_REMOTE

ci-profile: install
	$(FG) ci profile "$$CI_PROFILE"

ci-pipeline: install
	$(FG) data simulate
	$(DVC) repro
	$(FG) register

ci-gates: install
	$(FG) promote --dry-run

# The base revision's metrics on the same CI profile (scratch git worktree; reused when $(BASE_METRICS_DIR)
# already holds them for that commit and profile), so that ci-report diffs like with like.
ci-base: install
	$(FG) ci base-metrics --base "$$BASE_REF" --profile "$$CI_PROFILE" --out-dir "$$BASE_METRICS_DIR"

ci-report: install
	if [ -f "$$BASE_METRICS_DIR/base.json" ]; then set -- --base-metrics "$$BASE_METRICS_DIR"; else set --; fi; \
	$(FG) ci report --base "$$BASE_REF" $${HEAD_REV:+--head "$$HEAD_REV"} --gate-dir "$$GATE_DIR" "$$@"

# --- Red team (.github/workflows/redteam.yml, weekly): attacks the candidate in a scratch copy ------------
# `make redteam` after `dvc repro`; exits 1 when an attack is not caught (REDTEAM_ARGS=--report-only to only
# report). Scorecard in reports/redteam/scorecard.json and a run in the MLflow experiment `redteam`.
REDTEAM_ARGS ?=

.PHONY: redteam

redteam: install
	$(FG) redteam --target candidate $(REDTEAM_ARGS)
