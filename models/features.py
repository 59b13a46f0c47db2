"""Features of one pad for the trained models, computed from the calibrated observation.

The pad's corrected colour alone carries most of the signal; its CIEDE2000 distances to every chart
level and the baseline's position along the chart hand the model the chart's geometry, so a small
linear model suffices; the strip's bare base as photographed tells how the light and the strip lot
shift every colour of this strip; the card's held-out residual tells how far the correction itself
can be trusted. The names are stored in each model file and checked when it is loaded.
"""
from __future__ import annotations

import numpy as np

from calibration.observe import StripObservation
from calibration.specs import Pad
from models.pads import ChartPosition, chart_positions


def feature_names(pad: Pad) -> list[str]:
    return (["L", "a", "b"] + [f"de00_{level.code}" for level in pad.levels]
            + ["chart_position", "chart_gap", "base_L", "base_a", "base_b", "card_residual"])   # residual last


def strip_features(observation: StripObservation, charts: list[ChartPosition] | None = None) -> list[np.ndarray]:
    """One float32 feature vector per pad of the product, in product order (`charts`: the pads'
    chart positions, when the caller has them already)."""
    pads = observation.product.pads
    charts = charts or chart_positions(pads, observation.pad_lab)
    rows = []
    for lab, chart in zip(observation.pad_lab, charts):
        rows.append(np.concatenate([lab, chart.distances, [chart.position, chart.gap],
                                    observation.base_lab, [observation.residual_de00]]).astype(np.float32))
    return rows
