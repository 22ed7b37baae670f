"""Training cases whose voxel spacing is far from the others': usually a header written wrong
(a spacing in micrometres, a slice gap of 0.01 mm), and silent otherwise, since the plan and
the students go by the median. Each is named in a warning before training starts."""
from __future__ import annotations

from typing import Sequence

import numpy as np

from cctr.seg.data.case import Case

AXES = ("z", "y", "x")
FACTOR = 3.0   # a spacing more than 3x above or below the median along an axis is an outlier


def spacing_outliers(cases: Sequence[Case], factor: float = FACTOR) -> list[str]:
    """One line per case whose spacing along some axis is more than ``factor`` times above or
    below the median of ``cases`` (empty for fewer than three cases: no majority to go by)."""
    if len(cases) < 3:
        return []
    spacings = np.asarray([c.spacing for c in cases], dtype=np.float64)
    median = np.median(spacings, axis=0)
    out = []
    for case, spacing in zip(cases, spacings):
        ratio = spacing / median
        far = [AXES[a] for a in range(3) if ratio[a] > factor or ratio[a] < 1.0 / factor]
        if far:
            where = case.sources[0] if case.sources else case.case_id
            shown = ", ".join(f"{v:g}" for v in spacing)
            usual = ", ".join(f"{v:g}" for v in median)
            out.append(f"{where}: spacing ({shown}) mm (z, y, x) is far from the training cases' median "
                       f"({usual}) mm along {', '.join(far)}; check its header (the plan and the students go by the median)")
    return out
