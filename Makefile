# stockcore: `make run` serves with local PostgreSQL and Redis; `make test` runs the whole suite.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PROTOS := $(wildcard protos/stockcore/v1/*.proto)
GEN := clients/gen/stockcore/v1
# Extra pytest arguments, e.g. `make test PYTEST_ARGS="-k reserve"`.
PYTEST_ARGS ?=

.PHONY: run test proto deps redis browser promtool prometheus lint fmt bench plots clean-data help \
	node-caller dashboards screenshots

help:
	@echo "make run    - set up and serve gRPC on 127.0.0.1:50051 (metrics on :9464), and"
	@echo "             HTTP/JSON with the checkout page on http://127.0.0.1:8080/ (Envoy), and"
	@echo "             Prometheus with the consoles on http://127.0.0.1:9090/consoles/stockcore-overview.html"
	@echo "make test   - set up and run the whole suite"
	@echo "make bench  - the Reserve/Commit tables beside the empty call, and the hot-SKU sale"
	@echo "make load-day, load-report, load-flash, load-knee, load-scale, load-overload, load-fanout,"
	@echo "           load-outage - load tests (BENCHMARKS.md)"
	@echo "make load-recon - every payment provider fault injected: what reconciliation finds (BENCHMARKS.md)"
	@echo "make load-pay - the day paid with ConfirmPayment, then at the payment provider: one table"
	@echo "make soak   - the day's plateau held for 30 minutes (DURATION=), compared window by window"
	@echo "make chaos  - a seeded fault schedule under mixed load, then every check (RELIABILITY.md)"
	@echo "make hostile - abusive callers beside an ordinary one: what the abuse costs (SECURITY.md)"
	@echo "make plots  - copy the newest runs' key plots into docs/benchmarks/"
	@echo "make dashboards - write the Grafana dashboards (docs/dashboards/) and Prometheus consoles"
	@echo "             (docs/consoles/) from dashboards/panels.py"
	@echo "make screenshots - a browser's picture of each console of make run's Prometheus, into docs/"
	@echo "             (PROMETHEUS=url, RANGE=1h)"
	@echo "make lint   - ruff and mypy"

$(VENV)/.deps: requirements.lock pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.lock
	touch $@

# Where googleapis-common-protos keeps google/api/annotations.proto and google/rpc/*.proto.
GOOGLEAPIS = $$($(PY) -c 'import google.api as a, pathlib; print(pathlib.Path(a.__path__[0]).parent.parent)')

# Stubs are generated, never edited; they are rebuilt whenever a .proto is newer. The
# descriptor set is what the gateway (Envoy's grpc_json_transcoder) reads: our services
# with every import, and google/rpc/status.proto and error_details.proto, without which
# error bodies print as `{}` or lose their details.
$(GEN)/.stamp: $(PROTOS) $(VENV)/.deps
	rm -rf clients/gen && mkdir -p $(GEN)
	$(PY) -m grpc_tools.protoc -I protos -I $(GOOGLEAPIS) \
		--python_out=clients/gen --grpc_python_out=clients/gen \
		--plugin=protoc-gen-mypy=$(VENV)/bin/protoc-gen-mypy --mypy_out=clients/gen \
		--plugin=protoc-gen-mypy_grpc=$(VENV)/bin/protoc-gen-mypy_grpc --mypy_grpc_out=clients/gen \
		$(PROTOS)
	$(PY) -m grpc_tools.protoc -I protos -I $(GOOGLEAPIS) --include_imports \
		--descriptor_set_out=$(GEN)/descriptor.pb $(PROTOS) google/rpc/status.proto google/rpc/error_details.proto
	touch clients/gen/stockcore/__init__.py $(GEN)/__init__.py clients/gen/stockcore/py.typed
	touch $@

proto: $(GEN)/.stamp

$(VENV)/.installed: $(GEN)/.stamp pyproject.toml
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	touch $@

# Redis is needed only when no STOCKCORE_REDIS_URL names an existing server.
redis:
	@if [ -z "$$STOCKCORE_REDIS_URL" ] && ! command -v redis-server >/dev/null; then \
		if [ "$$(id -u)" = 0 ]; then \
			echo "installing Debian's redis-server"; \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null; \
		else \
			echo "redis-server is missing: install it (e.g. sudo apt-get install redis-server)" \
			     "or set STOCKCORE_REDIS_URL to an existing server" >&2; exit 1; \
		fi; \
	fi

# The checkout page's browser test drives Debian's chromium through chromedriver; it
# fails (never skips) without them.
browser:
	@if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then \
		if [ "$$(id -u)" = 0 ]; then \
			echo "installing Debian's chromium and chromium-driver"; \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; \
		else \
			echo "chromium or chromedriver is missing: sudo apt-get install chromium chromium-driver" >&2; exit 1; \
		fi; \
	fi

# promtool (Debian's prometheus package) checks and unit-tests the shipped alert rules.
promtool:
	@if ! command -v promtool >/dev/null; then \
		if [ "$$(id -u)" = 0 ]; then \
			echo "installing Debian's prometheus (for promtool)"; \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus >/dev/null; \
		else \
			echo "promtool is missing: install it (e.g. sudo apt-get install prometheus)" >&2; exit 1; \
		fi; \
	fi

# Prometheus (the same package) for `make run`, which serves without it, saying so, when it
# is missing and cannot be installed here.
prometheus:
	@if ! command -v prometheus >/dev/null; then \
		if [ "$$(id -u)" = 0 ]; then \
			echo "installing Debian's prometheus"; \
			{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus >/dev/null; } \
			|| echo "prometheus could not be installed: make run serves without it"; \
		else \
			echo "prometheus is missing (sudo apt-get install prometheus): make run serves without it"; \
		fi; \
	fi

deps: $(VENV)/.installed redis

run: deps prometheus
	$(PY) -m devstack

# The dashboards are code (dashboards/panels.py); their JSON and consoles are committed, and
# tests/unit/test_dashboards.py fails when they are stale.
dashboards: deps
	$(PY) -m dashboards write

# e.g. `make screenshots PROMETHEUS=http://127.0.0.1:9090 RANGE=3h` while `make run` serves.
screenshots: deps browser
	$(PY) -m dashboards screenshots $(call load_opt,PROMETHEUS,prometheus) $(call load_opt,RANGE,range)

test: deps browser promtool lint node-caller
	$(PY) -m pytest $(PYTEST_ARGS)

# The Node.js caller's packages (tests/e2e/test_node_caller.py), from npm, when node is here.
NODE_CALLER := tests/e2e/node
node-caller:
	@if ! command -v npm >/dev/null; then \
		echo "node/npm are not installed: the Node.js caller test will be skipped"; \
	elif [ ! -f $(NODE_CALLER)/node_modules/.installed ] || \
	     [ $(NODE_CALLER)/package-lock.json -nt $(NODE_CALLER)/node_modules/.installed ]; then \
		npm ci --prefix $(NODE_CALLER) --no-audit --no-fund --silent && \
		touch $(NODE_CALLER)/node_modules/.installed; \
	fi

# Every Python package of the project: the programs, their shared pieces, load tests, tests.
PACKAGES := runtime server clients fulfilment payments refunds simulators gateway devstack dashboards loadtests tests

lint: deps
	$(VENV)/bin/ruff check $(PACKAGES)
	$(VENV)/bin/ruff format --check $(PACKAGES)
	$(VENV)/bin/mypy

fmt: deps
	$(VENV)/bin/ruff format $(PACKAGES)
	$(VENV)/bin/ruff check --fix $(PACKAGES)

# e.g. `make bench LEVELS=64,128 DURATION=5 SALE_UNITS=500 SECURITY_ROUNDS=1` (plaintext / TLS
# rounds per cell, 3 by default); REPORTS= as for the load tests below.
bench: deps
	$(PY) -m loadtests.bench $(call load_opt,LEVELS,levels) $(call load_opt,DURATION,duration) \
		$(call load_opt,SALE_UNITS,sale-units) $(call load_opt,SECURITY_ROUNDS,security-rounds) \
		$(REPORTS_OPT)

# The key plot of the newest bench, day (or report), knee and soak runs in .reports/, copied
# to docs/benchmarks/{bench,day,knee,soak}.png (BENCHMARKS.md shows the first three); RUNS=
# names run folders instead, REPORTS= looks for runs in another folder, INTO= copies into
# another folder.
plots: deps
	$(PY) -m loadtests.plots $(REPORTS_OPT) $(call load_opt,INTO,into) $(RUNS)

clean-data:
	rm -rf .data

# Load tests (reports and plots under .reports/). The day and the flash sale are Locust
# scenarios (headless; its CSV and HTML report); the knee is the closed-loop driver. Each
# starts a fresh local stack unless STOCKCORE_TARGET names a server. Settable, e.g.
#   make load-day DURATION=180 SCALE=0.5 PROCESSES=2 API=inventory PAY_VIA=confirm
#   make load-flash USERS=2000 STOCK=1000     make load-knee LEVELS=16,64,128 DURATION=5
# and for every load target REPORTS=folder, where the run folders go instead of .reports/.
LOAD := $(PY) -m loadtests.scenarios
load_opt = $(if $($(1)),--$(2) $($(1)))
REPORTS_OPT = $(call load_opt,REPORTS,reports)
LOAD_COMMON = $(call load_opt,API,api) $(call load_opt,PROCESSES,processes) \
	$(call load_opt,SERVER_WORKERS,server-workers) $(call load_opt,WINDOW,payment-window) \
	$(call load_opt,SKUS,catalogue)
LOAD_DAY = $(LOAD_COMMON) $(call load_opt,DURATION,duration) $(call load_opt,PEAK_HOLD,peak-hold) \
	$(call load_opt,SCALE,scale) $(call load_opt,PACING,pacing) $(if $(PROFILE),--profile) \
	$(call load_opt,FLOOR,floor-seconds) $(call load_opt,PAY_VIA,pay-via)

.PHONY: load-day load-flash load-knee load-report load-scale load-overload load-fanout load-outage chaos soak hostile \
	load-recon load-pay

load-day: deps
	$(LOAD) $(REPORTS_OPT) day $(LOAD_DAY)

load-report: deps
	$(LOAD) $(REPORTS_OPT) day --compare $(LOAD_DAY)

# The day twice with the same knobs (those of load-day but PAY_VIA and PROFILE), paying
# with ConfirmPayment, then at the payment provider with the receiver, the reconciler and
# the refund sender beside it; one table sets the runs side by side (loadtests/paying.py).
load-pay: deps
	$(LOAD) $(REPORTS_OPT) pay $(LOAD_COMMON) $(call load_opt,DURATION,duration) \
		$(call load_opt,PEAK_HOLD,peak-hold) $(call load_opt,SCALE,scale) \
		$(call load_opt,PACING,pacing) $(call load_opt,FLOOR,floor-seconds)

# The day's plateau held for DURATION= seconds (1800; hours if asked), reported per
# REPORT_WINDOW= seconds of it (300); fails when the last full window is more than
# TOLERANCE= percent (10) worse than the first in CPU per order or order creation's mean.
# REST_OF_DAY= seconds (180) of the compressed day around the plateau; the knobs of load-day.
#   make soak DURATION=7200 SCALE=0.6 PROCESSES=2
soak: deps
	$(LOAD) $(REPORTS_OPT) soak $(LOAD_COMMON) $(call load_opt,DURATION,duration) \
		$(call load_opt,SCALE,scale) $(call load_opt,PACING,pacing) \
		$(call load_opt,REST_OF_DAY,rest-of-day) $(call load_opt,REPORT_WINDOW,report-window) \
		$(call load_opt,TOLERANCE,tolerance) $(call load_opt,FLOOR,floor-seconds)

load-flash: deps
	$(LOAD) $(REPORTS_OPT) flash $(LOAD_COMMON) $(call load_opt,USERS,users) $(call load_opt,SPAWN_RATE,spawn-rate) \
		$(call load_opt,STOCK,stock) $(call load_opt,DURATION,max-duration)

load-knee: deps
	$(PY) -m loadtests.knee $(call load_opt,API,api) $(call load_opt,SERVER_WORKERS,server-workers) \
		$(call load_opt,SKUS,catalogue) $(call load_opt,LEVELS,levels) \
		$(call load_opt,DURATION,duration) $(call load_opt,PROCESSES,processes) \
		$(call load_opt,P99_BOUND,p99-bound) $(REPORTS_OPT)

# The primary carrier down on the day's plateau, e.g.
#   make load-outage DURATION=180 OUTAGE_AT=60 OUTAGE=60 SCALE=0.2 WORKERS=2 PUBLISH=1
load-outage: deps
	$(PY) -m loadtests.outage $(call load_opt,DURATION,duration) $(call load_opt,OUTAGE_AT,outage-at) \
		$(call load_opt,OUTAGE,outage) $(call load_opt,SCALE,scale) $(call load_opt,WORKERS,workers) \
		$(call load_opt,PROCESSES,processes) $(call load_opt,DRAIN,drain) $(if $(PUBLISH),--publish) \
		$(REPORTS_OPT)

# CALLERS= closed-loop callers (32) and DURATION= seconds (5) of each latency measurement.
#   make load-scale SKUS=1000000 HOLDS=100000
load-scale: deps
	$(PY) -m loadtests.scale $(call load_opt,SKUS,skus) $(call load_opt,HOLDS,holds) \
		$(call load_opt,CALLERS,callers) $(call load_opt,DURATION,duration) $(REPORTS_OPT)

# The payment provider injecting every fault kind at FAULT_RATE= (0.01) over ORDERS= orders
# (20,000) at RATE= orders/s (50), CANCEL= of them cancelled once paid (0.2): each injected
# fault beside what reconciliation found (recall, false exceptions), the ledger's balance.
#   make load-recon ORDERS=2000 RATE=20
load-recon: deps
	$(PY) -m loadtests.recon $(call load_opt,ORDERS,orders) $(call load_opt,RATE,rate) \
		$(call load_opt,FAULT_RATE,fault-rate) $(call load_opt,CANCEL,cancel-share) $(REPORTS_OPT)

# A seeded fault schedule (kill -9, SIGSTOP, slow PostgreSQL, Redis restarts) under mixed
# load, then the invariants, every acknowledged outcome and the gate checked (RELIABILITY.md).
# Paying at the payment provider too (refunds included), with the reconciler: its kinds of
# fault kill -9 the reconciler, the webhook receiver or the refund sender. FAULTS= (comma-
# separated kinds) strikes those first, GAP= seconds apart (12).
#   make chaos SEED=7 DURATION=180
#   make chaos SEED=3 DURATION=31 GAP=1 FAULTS=kill-reconciler,kill-receiver
chaos: deps
	$(PY) -m loadtests.chaos $(call load_opt,SEED,seed) $(call load_opt,DURATION,duration) \
		$(call load_opt,GAP,gap) $(call load_opt,FAULTS,faults) $(REPORTS_OPT)

# Abusive callers (worst requests, 10,000 Health/Watch streams, one customer's 2,000
# WatchOrders streams, 64 STRONG readers) beside an ordinary Reserve caller, over TLS with
# tokens: its p99 with and without, the server's RSS and CPU per worst request.
# DURATION= seconds per phase (60), RATE= the ordinary caller's Reserve/s (100),
# HEALTH_STREAMS=, CUSTOMER_STREAMS=, ABUSERS= (worst,health,streams,reads: all).
hostile: deps
	$(PY) -m loadtests.hostile $(call load_opt,DURATION,duration) $(call load_opt,RATE,rate) \
		$(call load_opt,HEALTH_STREAMS,health-streams) $(call load_opt,ABUSERS,abusers) \
		$(call load_opt,CUSTOMER_STREAMS,customer-streams) $(REPORTS_OPT)

# 500 WatchOrders streams beside Reserve and CreateOrder: the writers' rate with and without.
# DURATION= seconds per phase (10), HISTORY= orders before the streams open (2,000, by the
# hundred), CALLERS= Reserve callers (64).
#   make load-fanout STREAMS=500
load-fanout: deps
	$(PY) -m loadtests.fanout $(call load_opt,STREAMS,streams) $(call load_opt,DURATION,duration) \
		$(call load_opt,HISTORY,history) $(call load_opt,CALLERS,callers) $(REPORTS_OPT)

# Reserve at 1,500 callers with 2 s deadlines between two phases at 64: refusals, goodput, recovery.
# BEFORE= and AFTER= are the seconds of the phases at 64 (20 each); NAIVE= makes the callers
# ignore RetryInfo and send a refused call again after that many seconds; PIN_LOAD=1 keeps the
# load on CPU 1 and the servers on the others.
#   make load-overload CALLERS=1500 OVERLOAD=120 NAIVE=0.05
load-overload: deps
	$(PY) -m loadtests.overload $(call load_opt,CALLERS,callers) $(call load_opt,OVERLOAD,overload) \
		$(call load_opt,BEFORE,before) $(call load_opt,AFTER,after) $(call load_opt,SKUS,catalogue) \
		$(call load_opt,NAIVE,naive) $(call load_opt,PIN_LOAD,pin-load) $(REPORTS_OPT)
