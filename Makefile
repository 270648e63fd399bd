# stagerun: the two commands of a fresh machine are `make run` and `make test`.
VENV   ?= .venv
PYTHON ?= python3
# CPU wheel by default; a GPU user sets TORCH_SPEC (see README), e.g.
#   make install TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"
TORCH_SPEC ?= torch==2.13.0
CORES  ?= all
ARGS   ?=
# The study to run: `make run STUDY=config/studies/X.yaml` (default: config/config.yaml). Its
# report is results/<study>/report.html (workflow.sweep report-path).
STUDY  ?= config/config.yaml
STUDY_ARGS = $(if $(filter config/config.yaml,$(STUDY)),,--configfile $(STUDY))
REPORT = $$(python -m workflow.sweep report-path $(STUDY))
export PATH := $(abspath $(VENV))/bin:$(PATH)

.PHONY: install run report status test bench lint clean

$(VENV)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install --quiet $(TORCH_SPEC)
	$(VENV)/bin/python -m pip install --quiet -r requirements.txt
	touch $@

install: $(VENV)/.installed

## run: a study (STUDY=..., default config/config.yaml) end to end, then its HTML report
## (plain `snakemake` does not rebuild the report: `make report` or `snakemake --report ...`)
run: install
	snakemake --cores $(CORES) $(STUDY_ARGS) $(ARGS)
	snakemake --report $(REPORT) $(STUDY_ARGS) $(ARGS)
	@echo "report: $(REPORT)"

report: install
	snakemake --report $(REPORT) $(STUDY_ARGS) $(ARGS)
	@echo "report: $(REPORT)"

## status: where the study stands (STUDY=...): runs per stage, running runs, gates, verdict;
## from another shell while `make run` works; ARGS=--watch refreshes it, ARGS=--json for scripts
status: install
	python -m workflow.status $(STUDY_ARGS) $(ARGS)

## test: the whole test suite (what CI runs)
## The SLURM tests spend most of their time waiting for the scheduler and its status polls, so
## they run beside the rest of the suite (two pytest processes; the SLURM one's log is printed
## first, the rest's summary last; either failing fails the target; each has its own basetemp).
SLURM_TESTS = tests/integration/test_slurm.py tests/integration/test_slurm_multinode.py
test: install
	lint-imports
	mkdir -p .tmp
	python -m pytest --basetemp=/tmp/stagerun-pytest-slurm $(SLURM_TESTS) > .tmp/slurm-tests.log 2>&1 & slurm=$$!; \
	python -m pytest --basetemp=/tmp/stagerun-pytest $(addprefix --ignore=,$(SLURM_TESTS)) > .tmp/tests.log 2>&1; rest=$$?; \
	wait $$slurm; slurm_rc=$$?; \
	echo "make test: SLURM tests exit $$slurm_rc, the rest exit $$rest"; \
	cat .tmp/slurm-tests.log .tmp/tests.log; \
	[ $$slurm_rc -eq 0 ] && [ $$rest -eq 0 ]

## bench: benchmarks (minutes; ratios against a reference measured in the same run)
bench: install
	python bench/bench_tokenize.py
	python bench/bench_train.py cpu
	python bench/bench_train.py fast
	python bench/bench_train.py muon
	python bench/bench_dag.py
	python bench/bench_job_overhead.py
	python bench/bench_script_capture.py

lint: install
	snakemake --lint

clean:
	rm -rf results .snakemake
