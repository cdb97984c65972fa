# The two commands: `make demo` and `make test`. Both install what is missing first.
PYTHON ?= python3
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: deps demo test test-fullsize test-slow

deps:
	@PYTHON=$(PYTHON) bash scripts/ensure_deps.sh test

demo: deps
	$(PYTHON) -m motia demo

# Tests run in TEST_WORKERS pytest-xdist processes, one intra-op thread each (tests/conftest.py).
TEST_WORKERS ?= 2

# pytest exits 5 when it collected no test: that is a failure here, not a pass.
test: deps
	@$(PYTHON) -m pytest -q -n $(TEST_WORKERS) $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing"; exit 1; fi; exit $$rc

test-fullsize: deps
	$(PYTHON) -m pytest -q -m fullsize $(PYTEST_ARGS)

test-slow: deps
	$(PYTHON) -m pytest -q -m slow $(PYTEST_ARGS)
