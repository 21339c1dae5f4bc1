# Two commands do all set-up on a fresh machine:
#   make run    create .venv, install neurostep and run the main job
#   make test   create .venv, install neurostep and run the whole test suite
# make docs builds the documentation site into site/.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test venv lint bench docs clean

venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt -e ".[triton,peers,experiments,notebooks,dev,docs,nir]"
	$(BIN)/pip install -q -c constraints.txt --no-deps spikingjelly
	touch $(STAMP)

run: venv
	$(BIN)/python -m neurostep run experiments/attention_alternatives.toml

test: venv
	$(BIN)/ruff check neurostep tests benchmarks experiments docs
	$(BIN)/python -m pytest -q -n 2 --dist loadfile

bench: venv
	$(BIN)/python benchmarks/neurons.py

lint: venv
	$(BIN)/ruff check neurostep tests benchmarks experiments docs

docs: venv
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

clean:
	rm -rf $(VENV) runs site
