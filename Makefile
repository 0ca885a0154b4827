# The two commands of the README. Each sets up .venv first (apt + pip, skipped when up to date).
.PHONY: demo demo-quick test setup benchmarks

setup:
	bash scripts/setup_env.sh

# The whole chain (world, teacher, student, map and localization through the ROS 2 nodes, evaluation,
# Corridor, report); settings in config/demo.yaml; reruns reuse unchanged stages (DEMO_ARGS=--fresh: redo all).
demo: setup
	.venv/bin/distilvpr demo $(DEMO_ARGS)

demo-quick: setup
	.venv/bin/distilvpr demo --quick $(DEMO_ARGS)

test: setup
	.venv/bin/python -m pytest -q

benchmarks: setup
	.venv/bin/pip install -qq --no-deps -r benchmarks/requirements.txt
	.venv/bin/python benchmarks/world_speed.py
	.venv/bin/python benchmarks/inference.py
	.venv/bin/python benchmarks/db_search.py --max-n 100000 --threads 1
	.venv/bin/python benchmarks/loop_closure_peers.py
