# USER: two commands on a fresh machine.
#   make demo   set up, then train SAC online on the simulated Franka (MINUTES=10)
#   make test   set up, then run the whole test suite
SHELL := /bin/bash
MINUTES ?= 10
ARGS ?=

.PHONY: setup demo test clean

setup:
	@bash scripts/setup.sh

demo: setup
	@source scripts/env.sh && userctl launch franka_sac robot:=sim max_minutes:=$(MINUTES) $(ARGS)

test: setup
	@source scripts/env.sh && python -m pytest $(PYTEST_ARGS)

clean:
	rm -rf build install log
