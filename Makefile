# The two commands of the README. Each sets up .venv first (apt + pip, skipped when up to date).
.PHONY: demo demo-quick test setup benchmarks

setup:
	bash scripts/setup_env.sh

demo: setup
	.venv/bin/distilvpr demo

demo-quick: setup
	.venv/bin/distilvpr demo --quick

test: setup
	.venv/bin/python -m pytest -q

benchmarks: setup
	.venv/bin/python benchmarks/world_speed.py
