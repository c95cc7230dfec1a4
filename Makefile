# Two commands do all the set-up on a fresh machine (see README.md):
#   make demo   assess the bundled sample volume with the bundled model and write a report
#   make test   run the test suite
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.motionssim-installed
SAMPLE := MotionSSIM/Resources/Samples/sample_t2_motion.nii.gz
TRUTH  := MotionSSIM/Resources/Samples/sample_t2_motion_true_ssim.csv

.PHONY: venv test demo lint bench clean-venv

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

lint: $(STAMP)
	$(VENV)/bin/ruff check .

bench: $(STAMP)
	$(PY) benchmarks/bench_inference.py
	$(PY) benchmarks/bench_training.py

clean-venv:
	rm -rf $(VENV)
