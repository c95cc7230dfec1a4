"""Where the files bundled with the Slicer module live: MotionSSIM/Resources beside this engine
package (a source checkout and an installed extension have the same layout). Every engine
module asks here instead of building the path itself."""

from __future__ import annotations

from pathlib import Path

__all__ = ["MODELS", "REQUIREMENTS", "RESOURCES", "SAMPLES", "model_file", "sample_file"]

# MotionSSIMLib/base/resources.py -> MotionSSIM/Resources
RESOURCES = Path(__file__).resolve().parents[2] / "Resources"
MODELS = RESOURCES / "Models"            # the bundled model(s) and their cards
SAMPLES = RESOURCES / "Samples"          # the sample volume and its true SSIM
REQUIREMENTS = RESOURCES / "requirements.txt"  # what pip installs at first use in Slicer


def model_file(name: str) -> Path:
    """A bundled model file by name."""
    return MODELS / name


def sample_file(name: str) -> Path:
    """A bundled sample file by name."""
    return SAMPLES / name
