# The two commands a newcomer needs: `make demo` and `make test` (both run the idempotent setup first).
.PHONY: setup demo test lint format bench lock clean

setup:
	bash deploy/setup.sh

demo: setup
	.venv/bin/reels demo

# Two workers, each taking whole test files (module fixtures such as a running stack are built once):
# on 2 cores the suite spends much of its time waiting on servers, so this about halves its wall time.
TEST_WORKERS ?= 2
test: setup
	.venv/bin/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile

lint:
	.venv/bin/ruff check . && .venv/bin/ruff format --check .

format:
	.venv/bin/ruff check --fix . && .venv/bin/ruff format .

bench: setup
	.venv/bin/reels bench data --record

# Re-resolve the pinned stack in a scratch venv and rewrite deploy/constraints-cpu.txt.
lock:
	rm -rf build/lock-venv && python3.11 -m venv build/lock-venv
	build/lock-venv/bin/pip install -q 'pip<26.3' && build/lock-venv/bin/pip install -q '.[dev]'
	{ echo "# Resolved CPU stack, used as pip constraints by deploy/setup.sh. Regenerate: make lock"; \
	  build/lock-venv/bin/pip freeze --exclude reels; } > deploy/constraints-cpu.txt

clean:
	rm -rf data build
