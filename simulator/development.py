"""How a reagent pad's colour develops after dipping, for the simulated camera.

The chart on the bottle shows each pad's colour at its own read time; before that the reaction is
still running (the colour lags behind, approaching its final level exponentially), and some
reactions keep going afterwards (leukocyte esterase, blood peroxidase and ketone pads darken for
minutes), which is why a pad read late can be misread and a reader must respect the read window.
"""
from __future__ import annotations

import math

from calibration.specs import Pad

RATE = 3.0                                   # e-foldings of the reaction by the read time
DRIFT_PER_READ_TIME = {"LEU": 0.6, "BLD": 0.35, "KET": 0.3, "PRO": 0.1}   # levels gained per read time late


def level_position(pad: Pad, final: float, seconds_since_dip: float) -> float:
    """The pad's fractional level position `seconds_since_dip` after dipping, for a pad that
    shows level position `final` at its read time."""
    if seconds_since_dip <= 0:
        return 0.0
    x = seconds_since_dip / pad.read_at_s
    if x <= 1:
        return final * (1 - math.exp(-RATE * x)) / (1 - math.exp(-RATE))
    drift = DRIFT_PER_READ_TIME.get(pad.analyte, 0.0) * (x - 1)
    return min(final + drift, len(pad.levels) - 1.0)
