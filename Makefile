# Two commands do everything on a fresh machine:
#   make book   creates .venv, installs requirements.txt, builds the book into _build/html
#   make test   the same venv plus requirements-dev.txt, then the whole test suite
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: book test clean

# The venv's site-packages gets a .pth naming this checkout, so `python -m kfaclab`, the
# book's notebooks and papermill kernels import the library from anywhere.
$(VENV)/.deps: requirements.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --disable-pip-version-check -q -r requirements.txt
	$(BIN)/python -c "import site, pathlib; pathlib.Path(site.getsitepackages()[0], 'kfaclab-checkout.pth').write_text('$(CURDIR)\n')"
	touch $@

$(VENV)/.dev-deps: requirements-dev.txt $(VENV)/.deps
	$(BIN)/python -m pip install --disable-pip-version-check -q -r requirements-dev.txt
	touch $@

book: $(VENV)/.deps
	$(BIN)/jupyter-book build . -W -n --keep-going
	@echo "The book is built: open file://$(CURDIR)/_build/html/index.html"

test: $(VENV)/.dev-deps
	$(BIN)/python -m pytest tests

clean:
	rm -rf _build
