# Two commands do everything on a fresh machine:
#   make book   creates .venv, installs requirements.txt, builds the book into _build/html
#   make test   the same venv plus requirements-dev.txt, the linter (ruff, configured in
#               pyproject.toml), then the whole test suite
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: book test clean

# requirements.txt is the pinned environment; kfaclab itself is installed editable from
# pyproject.toml (no dependencies of its own: the pins decide), so `kfaclab`, `python -m
# kfaclab`, the book's notebooks, papermill kernels and Ray workers import this checkout.
$(VENV)/.deps: requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --disable-pip-version-check -q -r requirements.txt
	$(BIN)/python -c "import site, pathlib; pathlib.Path(site.getsitepackages()[0], 'kfaclab-checkout.pth').unlink(missing_ok=True)"
	$(BIN)/python -m pip install --disable-pip-version-check -q --no-deps -e .
	touch $@

$(VENV)/.dev-deps: requirements-dev.txt $(VENV)/.deps
	$(BIN)/python -m pip install --disable-pip-version-check -q -r requirements-dev.txt
	touch $@

book: $(VENV)/.deps
	$(BIN)/jupyter-book build . -W -n --keep-going
	@echo "The book is built: open file://$(CURDIR)/_build/html/index.html"

test: $(VENV)/.dev-deps
	$(BIN)/ruff check .
	$(BIN)/python -m pytest tests

clean:
	rm -rf _build
