"""Make the engine and the Slicer module folders importable without installing them."""

import locale
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
for folder in (ROOT / "MotionSSIM", ROOT / "MotionSSIMTraining"):
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))

# Two cores are shared: keep torch from oversubscribing them in tests.
os.environ.setdefault("OMP_NUM_THREADS", "2")


@pytest.fixture
def c_locale():
    """The C locale (ASCII text I/O by default), as ITK sets it in the process it is loaded in
    and as a bare container has: files we write must not depend on the locale."""
    before = locale.setlocale(locale.LC_CTYPE)
    locale.setlocale(locale.LC_CTYPE, "C")
    try:
        yield
    finally:
        locale.setlocale(locale.LC_CTYPE, before)
