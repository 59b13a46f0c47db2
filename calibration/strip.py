"""Where the strip lies, which way round, and whether it is the expected product.

The colour profile along the slot's centre line (colour-corrected, CIELAB) is compared with what
each hypothesis predicts at every 0.5 mm: the expected product the right way round, the same turned
end for end, lying pads-down, every other known product, and an empty slot. A pad position predicts
"a colour on this pad's chart", bare strip predicts the strip's base colour, beyond the strip the
card's white. The best-fitting hypothesis decides; the right way round must win clearly, so a
reversed or foreign strip is refused rather than misread.

Which way round a strip lies is a question only its pads answer, and on a strip whose pads sit
near its middle (acr-2) it rests on their colours alone. Those are judged in CIEDE2000: the card's
inks and the reagents' dyes part ways under other lights and sensors mostly in chroma, which CIE76
overweights, so in CIE76 a right-way strip under a fluorescent tube often looked no better than
turned round (12 % of good acr-2 photos refused on `bench/generalization.py`'s; in CIEDE2000, 2.3 %
of good strips refused and 1.7 % of turned ones read: `bench/orientation.py`).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from calibration.colour import delta_e_2000, hex_to_lab_d50
from calibration.errors import ReadError
from calibration.quantiles import median
from calibration.specs import Card, Product, builtin_products, load_product

STEP_MM = 0.5
MARGIN_MM = 4.0                     # profile runs this far beyond both ends of the slot
ACROSS_MM = np.linspace(-1.5, 1.5, 7)
ALONG_SUB_MM = np.array([-0.15, 0.0, 0.15])
EDGE_MM = 0.8                       # bins this close to a boundary are ignored (placement jitter)
SHIFTS = np.arange(-4, 5)           # +-2 mm in bins: placement in the slot varies
# Costs are mean CIELAB distances (CIE76): only compared with each other, so the cheap metric serves.
COST_CAP = 30.0                     # one odd pad must not outweigh the whole profile
MIN_MARGIN = 12.0                   # distance x mm by which the right way round must beat every other
TURN_MARGIN = 2.0                   # CIEDE2000 x mm by which it must beat itself turned end for end
MAX_MATCH_COST = 12.0               # above: the strip does not look like the product at all
CHART_STEPS = 6                     # interpolated colours per chart segment

WHITE, BASE, EDGE = 0, 1, -1


@dataclass(frozen=True)
class StripMatch:
    shift_mm: float             # measured offset of the strip along the slot
    cost: float                 # mean CIELAB distance of the profile from the product's pattern
    reversed_margin: float      # how much worse the strip fits turned round (CIEDE2000 x mm)
    base_lab: np.ndarray        # the strip's bare base as seen in this photo (CIELAB D50)


def profile_points(card: Card) -> tuple[np.ndarray, np.ndarray]:
    """Positions along the slot (bins,) and the card points (bins, samples, 2) sampled per bin."""
    along = np.arange(-MARGIN_MM, card.slot_length_mm + MARGIN_MM + 1e-9, STEP_MM)
    s = along[:, None, None] + ALONG_SUB_MM[None, :, None]
    t = np.broadcast_to(ACROSS_MM[None, None, :], s.shape[:2] + (len(ACROSS_MM),))
    s = np.broadcast_to(s, t.shape)
    return along, card.slot_to_card(s, t).reshape(len(along), -1, 2)


def chart_polyline(levels_lab: np.ndarray) -> np.ndarray:
    """Chart colours with straight-line steps between neighbours, (points, 3)."""
    f = np.linspace(0, 1, CHART_STEPS, endpoint=False)[None, :, None]
    segs = levels_lab[:-1, None, :] * (1 - f) + levels_lab[1:, None, :] * f
    return np.vstack([segs.reshape(-1, 3), levels_lab[-1:]])


def _labels(product: Product, along: np.ndarray, reverse: bool, pad_index: dict) -> np.ndarray:
    """What each bin of the profile should show for the product lying from the handle mark."""
    length = product.strip_length_mm
    labels = np.full(len(along), WHITE)
    labels[(along > EDGE_MM) & (along < length - EDGE_MM)] = BASE
    labels[np.abs(along - length) <= EDGE_MM] = EDGE
    labels[np.abs(along) <= EDGE_MM] = EDGE
    for pad in product.pads:
        center = length - pad.center_mm if reverse else pad.center_mm
        half = pad.size_mm / 2
        labels[np.abs(along - center) <= half + EDGE_MM] = EDGE
        labels[np.abs(along - center) <= half - EDGE_MM] = pad_index[(product.id, pad.analyte)]
    return labels


def _shifted(labels: np.ndarray) -> np.ndarray:
    """(shifts, bins): the pattern moved along the slot; what comes in from beyond is card white."""
    rows = np.stack([np.roll(labels, k) for k in SHIFTS])
    for row, k in zip(rows, SHIFTS):
        if k > 0:
            row[:k] = WHITE
        elif k < 0:
            row[k:] = WHITE
    return rows


@dataclass(frozen=True)
class _Hypotheses:
    """Everything about the slot that does not depend on the photo, built once per card and product."""
    references: np.ndarray      # (points, 3) CIELAB: card white (placeholder), strip base, every chart's path
    groups: np.ndarray          # (references, longest path, 3): each reference alone, padded with its last point
    starts: np.ndarray          # first row of each reference in `references`
    labels: np.ndarray          # (hypotheses, shifts, bins) reference index per bin, EDGE to ignore
    refusals: tuple             # (code, message) for hypotheses 1.. (0 is the product the right way)


@lru_cache(maxsize=16)
def _hypotheses(card: Card, product: Product) -> _Hypotheses:
    along, _ = profile_points(card)
    products = (product,) + _other_products(product.id)
    references = [np.zeros((1, 3)), hex_to_lab_d50(product.strip_base_srgb)[None]]
    pad_index = {}
    for p in products:
        for pad in p.pads:
            pad_index[(p.id, pad.analyte)] = len(references)
            references.append(chart_polyline(pad.level_lab))
    length = product.strip_length_mm
    plain = np.where((along > EDGE_MM) & (along < length - EDGE_MM), BASE, WHITE)
    plain[(np.abs(along) <= EDGE_MM) | (np.abs(along - length) <= EDGE_MM)] = EDGE
    empty = np.where(np.abs(along) <= EDGE_MM, EDGE, WHITE)
    turn = "put its handle end (the end without pads) on the handle mark and read again."
    patterns = [(_labels(product, along, False, pad_index), None),
                (empty, ("strip_not_found", "No strip was found in the slot: lay the dipped strip in the "
                                            "slot, pads up, with its handle end on the handle mark.")),
                (plain, ("strip_reversed", "The strip's pads are facing down: turn the strip pads up, with "
                                           "its handle end on the handle mark, and read again.")),
                (_labels(product, along, True, pad_index),
                 ("strip_reversed", "The strip is the wrong way round (or cannot be told apart): " + turn))]
    for other in products[1:]:
        for reverse in (False, True):
            patterns.append((_labels(other, along, reverse, pad_index),
                             ("wrong_strip", f"This looks like a different strip ({other.name}), not the "
                                             f"{product.name} this reading is set for: use the right strip or "
                                             "choose its product.")))
    longest = max(len(r) for r in references)
    groups = np.stack([np.vstack([r, np.repeat(r[-1:], longest - len(r), axis=0)]) for r in references])
    return _Hypotheses(np.vstack(references), groups, np.cumsum([0] + [len(r) for r in references[:-1]]),
                       np.stack([_shifted(labels) for labels, _ in patterns]),
                       tuple(refusal for _, refusal in patterns[1:]))


TURNED = 3   # index of "the product turned end for end" among the hypotheses


@lru_cache(maxsize=8)
def _other_products(expected_id: str) -> tuple[Product, ...]:
    return tuple(load_product(pid) for pid in builtin_products() if pid != expected_id)


def _excess(better: np.ndarray, worse: np.ndarray) -> float:
    """How much worse one hypothesis fits than another, in CIELAB distance x mm of strip, summed
    over the bins both predict (a paired comparison: a few pads' worth of evidence is not diluted
    by the long stretches where the two hypotheses agree)."""
    both = ~(np.isnan(better) | np.isnan(worse))
    return float(np.sum(worse[both] - better[both]) * STEP_MM)


def _mean_seen(costs: np.ndarray) -> np.ndarray:
    """Mean over the last axis of the bins compared (not NaN); infinite where none is (a slot wholly
    under a highlight), instead of numpy's warning and NaN."""
    compared = ~np.isnan(costs)
    total = np.where(compared, costs, 0.0).sum(axis=-1)
    return np.where(compared.any(axis=-1), total / np.maximum(compared.sum(axis=-1), 1), np.inf)


def _turn_margin(h: _Hypotheses, profile_lab: np.ndarray, seen: np.ndarray, white_lab: np.ndarray,
                 best_shift: np.ndarray) -> float:
    """How much worse the strip fits turned end for end than the right way round, in CIEDE2000 x mm,
    over the bins where the two predict different colours (elsewhere they cancel)."""
    groups = h.groups.copy()
    groups[0] = white_lab
    right, turned = h.labels[0, best_shift[0]], h.labels[TURNED, best_shift[TURNED]]
    differ = (right != turned) & (right != EDGE) & (turned != EDGE) & seen
    colours = profile_lab[differ, None, :]
    fit = [np.minimum(delta_e_2000(colours, groups[labels[differ]]).min(axis=1), COST_CAP) for labels in (right, turned)]
    return float(np.sum(fit[1] - fit[0]) * STEP_MM)


def match_strip(card: Card, product: Product, profile_lab: np.ndarray, seen: np.ndarray,
                white_lab: np.ndarray, colour_error_de00: float = 1.0) -> StripMatch:
    """Decide from the slot profile (bins, 3) that the expected strip lies the right way round, or
    raise `strip_not_found`, `strip_reversed` or `wrong_strip`. Bins not `seen` (under glare) are
    left out of every comparison; `white_lab` is the card's paper as measured in this photo (real
    paper is not the ideal white of the card file, and the strip's base is nearly white too)."""
    h = _hypotheses(card, product)
    references = h.references.copy()
    references[0] = white_lab
    d2 = ((profile_lab[:, None, :] - references[None, :, :]) ** 2).sum(axis=-1)
    dist = np.minimum(np.sqrt(np.minimum.reduceat(d2, h.starts, axis=1)), COST_CAP)   # (bins, refs)
    per_bin = dist[np.arange(len(profile_lab)), np.maximum(h.labels, 0)]             # (hyp, shifts, bins)
    per_bin[(h.labels == EDGE) | ~seen] = np.nan
    best_shift = np.argmin(_mean_seen(per_bin), axis=1)
    fits = per_bin[np.arange(len(per_bin)), best_shift]                              # (hyp, bins)
    margins = np.array([_excess(fits[0], alternative) for alternative in fits[1:]])
    # evidence in colour is worth as much as the colours are right: a card correction that misses
    # its own patches by several dE00 must see the other hypotheses lose by as many times more
    close = margins < MIN_MARGIN * max(1.0, colour_error_de00)
    closest = int(np.argmin(margins))
    # which way round is settled in CIEDE2000 (the module's docstring says why), unless another
    # hypothesis (an empty slot, the pads facing down, another product) fits better still
    turn_margin = _turn_margin(h, profile_lab, seen, white_lab, best_shift)
    if (closest == TURNED - 1 or not close[closest]) and turn_margin < TURN_MARGIN:
        raise ReadError(*h.refusals[TURNED - 1])
    close[TURNED - 1] = False
    if close.any():
        raise ReadError(*h.refusals[int(np.argmin(np.where(close, margins, np.inf)))])
    cost = float(_mean_seen(fits[0]))
    if cost > MAX_MATCH_COST:
        raise ReadError("wrong_strip", f"The strip does not match the {product.name}: use the right strip "
                                       "or choose its product.")
    bare = (h.labels[0, best_shift[0]] == BASE) & seen
    # no bare strip in view (all of it under a highlight): the product's printed base stands in
    base_lab = median(profile_lab[bare], axis=0) if bare.any() else h.references[BASE]
    return StripMatch(float(SHIFTS[best_shift[0]]) * STEP_MM, cost, turn_margin, base_lab)
