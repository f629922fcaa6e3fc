"""The LiDAR map: builder, submaps, the versioned memory-mapped on-disk format and retrieval.

``load_map`` is the one way to open a map (it validates everything); ``save_map`` writes one atomically.
Importing this package pulls in numpy only (scipy/tqdm load when building).
"""

from .builder import FeatureFn, MapBuildParams, build_map, compute_features
from .retrieval import nearest_submaps, top_k_by_descriptor
from .store import FORMAT_NAME, FORMAT_VERSION, LidarMap, MapFormatError, Submap, load_map, save_map

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "FeatureFn",
    "LidarMap",
    "MapBuildParams",
    "MapFormatError",
    "Submap",
    "build_map",
    "compute_features",
    "load_map",
    "nearest_submaps",
    "save_map",
    "top_k_by_descriptor",
]
