"""What an assessment returns: each slice's record and the volume's Assessment.

Plain data (numpy-free dataclasses), so that Slicer's main process can read a child's results
(`job_files`) without importing torch.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class SliceRecord:
    index: int
    position_mm: float
    ssim: float
    clinical_class: int
    foreground: float
    empty: bool  # not counted: too little foreground, or blank
    blank: bool = False  # no contrast (constant or nearly so): flagged empty
    ssim_sd: float = 0.0  # the head's sd, or the spread over the views (0: one view, no head)
    uncertain: bool = False  # ssim +- UNCERTAIN_SDS * ssim_sd contains a class threshold
    noise: bool = False  # noise without a head (geometry.slice_structure): flagged empty


@dataclass
class Assessment:
    records: list[SliceRecord]
    summary: dict[str, Any]
    orientation: str
    axis: str
    pixel_spacing: tuple[float, float] = (1.0, 1.0)
    model: dict[str, Any] = field(default_factory=dict)  # short model description

    def to_dict(self) -> dict[str, Any]:
        return {"orientation": self.orientation, "axis": self.axis,
                "pixel_spacing": list(self.pixel_spacing), "model": self.model,
                "summary": self.summary, "slices": [asdict(r) for r in self.records]}
