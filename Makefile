# The two commands the README opens with. Both create .venv/ on first use (scripts/setup_env.sh).
.PHONY: setup demo test lint bench clean

setup:
	@bash scripts/setup_env.sh

demo: setup
	.venv/bin/ep2p-loc demo --out reports/demo

test: setup
	.venv/bin/python -m pytest $(PYTEST_ARGS)

lint: setup
	.venv/bin/ruff check .

bench: setup
	.venv/bin/python bench/bench_ipr.py
	.venv/bin/python bench/bench_pnp.py
	.venv/bin/python bench/bench_map_memory.py
	.venv/bin/python bench/bench_matching.py

clean:
	rm -rf .venv reports .pytest_cache .ruff_cache build *.egg-info
