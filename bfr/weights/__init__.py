"""Model weights: the catalog of known files, finding or fetching them, and loading them safely."""

from bfr.weights.catalog import CATALOG, FACEXLIB_NETWORKS, TORCHVISION_NETWORKS, WeightSpec, get_spec
from bfr.weights.hub import ChecksumError, available, cache_dir, offline, resolve, resolve_all, sha256_of, verify_sha256
from bfr.weights.load import (
    LoadReport,
    StateDictMismatchError,
    load_fetched,
    load_into,
    load_pretrained,
    load_state_dict,
    read_metadata,
    save_safetensors,
    unwrap_state_dict,
)

__all__ = [
    "CATALOG",
    "FACEXLIB_NETWORKS",
    "TORCHVISION_NETWORKS",
    "ChecksumError",
    "LoadReport",
    "StateDictMismatchError",
    "WeightSpec",
    "available",
    "cache_dir",
    "get_spec",
    "load_fetched",
    "load_into",
    "load_pretrained",
    "load_state_dict",
    "offline",
    "read_metadata",
    "resolve",
    "resolve_all",
    "save_safetensors",
    "sha256_of",
    "unwrap_state_dict",
    "verify_sha256",
]
