"""Progress bars for the driver's long steps (dataset generation, the prepare job, batch prediction, `pipeline
check`): tqdm on stderr, redrawn every second on a terminal and every ten seconds into a log (`ray job logs`)."""

from __future__ import annotations

import sys

from tqdm import tqdm


def progress_bar(total: int, desc: str, unit: str) -> tqdm:
    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, mininterval=1 if sys.stderr.isatty() else 10,
                dynamic_ncols=True)  # fmt: skip
