"""Exceptions of the weights package (every one names the file and the fix), and the
description of how two variable trees differ that they carry."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from flax.traverse_util import flatten_dict

from resnext_jax.errors import UsageError


class WeightsError(UsageError):
    """A checkpoint that cannot be loaded into the requested model (nothing was loaded)."""


class WeightsFileError(WeightsError):
    """A file that cannot be read: missing, truncated, corrupted, unsafe or of unknown type."""


def tree_differences(expected: Mapping[str, Any], found: Mapping[str, Any],
                     shown: int = 4) -> list[str]:
    """How the array tree ``found`` differs from ``expected`` (leaves with ``.shape``): one
    line per kind (missing, unexpected, other shapes) naming the first ``shown`` leaves by
    ``a/b/c`` path; empty when the trees match."""
    want = {"/".join(map(str, p)): tuple(v.shape) for p, v in flatten_dict(expected).items()}
    got = {"/".join(map(str, p)): tuple(np.shape(v)) for p, v in flatten_dict(found).items()}
    kinds = [("missing", sorted(want.keys() - got.keys())),
             ("unexpected", sorted(got.keys() - want.keys())),
             ("other shapes", [f"{k} {got[k]} instead of {want[k]}"
                               for k in sorted(want.keys() & got.keys()) if want[k] != got[k]])]
    return [f"{len(items)} {kind}: " + ", ".join(items[:shown])
            + (f", ... (+{len(items) - shown})" if len(items) > shown else "")
            for kind, items in kinds if items]
