"""Exceptions of the weights package (every one names the file and the fix), and the
description of how two variable trees differ that they carry."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from flax.traverse_util import flatten_dict


class WeightsError(ValueError):
    """A checkpoint that cannot be loaded into the requested model (nothing was loaded)."""


class WeightsFileError(WeightsError):
    """A file that cannot be read: missing, truncated, corrupted, unsafe or of unknown type."""


def tree_differences(expected: Mapping[str, Any], found: Mapping[str, Any]) -> list[str]:
    """How the array tree ``found`` differs from ``expected`` (anything with ``.shape``):
    missing, unexpected and differently shaped leaves by ``a/b/c`` path; empty when equal."""
    want = {"/".join(map(str, p)): tuple(v.shape) for p, v in flatten_dict(expected).items()}
    got = {"/".join(map(str, p)): tuple(np.shape(v)) for p, v in flatten_dict(found).items()}
    return ([f"missing {k}" for k in sorted(want.keys() - got.keys())]
            + [f"unexpected {k}" for k in sorted(got.keys() - want.keys())]
            + [f"{k}: {got[k]} instead of {want[k]}" for k in sorted(want.keys() & got.keys())
               if want[k] != got[k]])
