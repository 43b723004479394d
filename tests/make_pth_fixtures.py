"""Write the ``.pth`` fixtures from the safetensors fixtures, with torch itself (not in CI)::

    /work/torchenv/bin/python tests/make_pth_fixtures.py

- ``timm_seresnext_t.pth``: torch's zip format (torch >= 1.6), wrapped as training scripts
  save it (``{"state_dict": ..., "epoch": 3}``);
- ``legacy_seresnext.legacy.pth``: torch's legacy stream format, a plain state dict, as
  Cadene's pretrainedmodels released its SENet weights.

Needs only torch and safetensors (tests/make_weight_fixtures.py makes the safetensors files).
"""

from __future__ import annotations

import os

import safetensors.torch
import torch

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "weights")


def main() -> None:
    zipped = safetensors.torch.load_file(os.path.join(OUT, "timm_seresnext_t.safetensors"))
    torch.save({"state_dict": zipped, "epoch": 3}, os.path.join(OUT, "timm_seresnext_t.pth"))
    legacy = safetensors.torch.load_file(os.path.join(OUT, "legacy_seresnext.safetensors"))
    torch.save(legacy, os.path.join(OUT, "legacy_seresnext.legacy.pth"),
               _use_new_zipfile_serialization=False)
    print(f"torch {torch.__version__}: wrote timm_seresnext_t.pth (zip) and "
          "legacy_seresnext.legacy.pth (legacy)")


if __name__ == "__main__":
    main()
