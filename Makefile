# Two entry points on a fresh machine with Python 3.11:
#   make report   -> environment, synth300w, cpu profile of every family notebook, report
#   make test     -> environment, then the whole test suite
# TORCH_SPEC is overridable: the default pins the CPU build used by CI; on a CUDA machine use e.g.
#   make report TORCH_SPEC="torch==2.13.0" PROFILE=gpu
PYTHON      ?= python3.11
VENV        ?= .venv
TORCH_SPEC  ?= torch==2.13.0
PROFILE     ?= cpu
DATA        ?= synth
EXTRAS      ?= test,cluster,export
PY          := $(VENV)/bin/python
# Family notebooks in run order: init first, because the cpu profile's attention rows fine-tune its `normal` run.
FAMILY_ORDER := init attention darts densenas multiscale
FAMILIES    := $(FAMILY_ORDER) $(filter-out $(FAMILY_ORDER),$(basename $(notdir $(wildcard params/*.yaml))))

.PHONY: env test report clean

$(VENV)/.installed: pyproject.toml Makefile
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "need $(PYTHON) (set PYTHON=...)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install "$(TORCH_SPEC)"
	$(PY) -m pip install -e ".[$(EXTRAS)]"
	$(PY) -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (nbutils)"
	touch $@

env: $(VENV)/.installed

test: env
	$(PY) -m pytest -q --timeout=900 tests

report: env
	$(PY) -m nbutils data synth --size $(PROFILE)
	@for fam in $(FAMILIES); do \
	  $(PY) -m nbutils run $$fam --profile $(PROFILE) --data $(DATA) || status=1; \
	done; \
	$(PY) -m nbutils report; exit $${status:-0}

clean:
	rm -rf $(VENV) outputs
