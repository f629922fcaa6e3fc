"""Whether a map is indoor or outdoor, told from how far its scans see, for sequences that do not say.

The localizer aligns indoor maps by local contrast and outdoor ones by levels (models/README.md, "Session 26"):
local contrast loses badly outdoors (57 → 23 % within 0.5 m / 5°) and levels lose indoors, so a map has to say
where it is. A synthetic sequence says so in its ``sim.json``; a recorded one does not, and an indoor map that says
"unknown" gets the outdoor alignment. Rooms and corridors bound what a LiDAR's near-horizontal beams reach to a few
metres in nearly every direction; streets let them run 50 m and more along the road. The median over scans of each
scan's 90th percentile of those ranges (one value per degree of azimuth) separates the two by a wide margin:
6.8-7.7 m on nine synthetic indoor drives, 63-72 m on ten synthetic outdoor ones, 54-63 m on three real KITTI
scans. Between the two thresholds (a hall, a warehouse, a courtyard) the map stays "unknown" and the builder says so.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

NEAR_HORIZONTAL_DEG = 3.0  # returns within this of the sensor's horizontal plane measure how far it can see
MIN_RANGE_M = 1.0  # nearer returns are the vehicle or robot itself
MIN_AZIMUTH_BINS = 30  # of 360: fewer degrees of azimuth with such returns say nothing (a tilted or narrow sensor)
INDOOR_MAX_M = 15.0  # median openness at or below this: indoor
OUTDOOR_MIN_M = 40.0  # at or above this: outdoor


def scan_openness(scan: np.ndarray) -> float:
    """How far one scan sees: the 90th percentile over azimuth degrees of the farthest near-horizontal return (m).

    ``scan`` is (N, >= 3) in the LiDAR frame (REP-103: z up). NaN when too few degrees of azimuth have a return.
    """
    xyz = np.asarray(scan, dtype=np.float64)[:, :3]
    xyz = xyz[np.isfinite(xyz).all(axis=1)]
    horizontal = np.hypot(xyz[:, 0], xyz[:, 1])
    near = (horizontal > MIN_RANGE_M) & (np.abs(xyz[:, 2]) <= horizontal * np.tan(np.radians(NEAR_HORIZONTAL_DEG)))
    if not near.any():
        return float("nan")
    azimuth = np.degrees(np.arctan2(xyz[near, 1], xyz[near, 0]))
    bins = np.floor(azimuth + 180.0).astype(np.int64) % 360
    farthest = np.zeros(360)
    np.maximum.at(farthest, bins, horizontal[near])
    seen = farthest[farthest > 0]
    return float(np.percentile(seen, 90)) if len(seen) >= MIN_AZIMUTH_BINS else float("nan")


def environment_from_openness(openness: Iterable[float]) -> tuple[str, str]:
    """("indoor" | "outdoor" | "unknown", why) from the scans' openness values (NaNs are skipped)."""
    values = np.asarray(list(openness), dtype=np.float64)
    values = values[np.isfinite(values)]
    if len(values) == 0:
        return "unknown", "no scan has near-horizontal returns in enough directions"
    median = float(np.median(values))
    why = f"scans see {median:.1f} m (median of {len(values)})"
    if median <= INDOOR_MAX_M:
        return "indoor", f"{why} <= {INDOOR_MAX_M:g} m"
    if median >= OUTDOOR_MIN_M:
        return "outdoor", f"{why} >= {OUTDOOR_MIN_M:g} m"
    return "unknown", f"{why}, between {INDOOR_MAX_M:g} and {OUTDOOR_MIN_M:g} m: pass --environment"
