"""Make the engine and the Slicer module folders importable without installing them."""

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for folder in (ROOT / "MotionSSIM", ROOT / "MotionSSIMTraining"):
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))

# Two cores are shared: keep torch from oversubscribing them in tests.
os.environ.setdefault("OMP_NUM_THREADS", "2")
