"""Hugging Face Hub ids (``timm/seresnext50_32x4d.racm_in1k``) to local files.

The local cache (laid out by ``huggingface_hub``) is tried first, so nothing touches the
network when the file is there; offline mode (``HF_HUB_OFFLINE=1``) never downloads.
"""

from __future__ import annotations

import os
import re

from resnext_jax.weights.errors import WeightsFileError

HUB_FILES = ("model.safetensors", "pytorch_model.bin")  # preferred first
HUB_PREFIX = "hf-hub:"
_REPO_ID = re.compile(r"^[\w.-]+/[\w.-]+$")


def is_hub_id(source: str) -> bool:
    """``org/name`` or ``hf-hub:org/name``."""
    return source.startswith(HUB_PREFIX) or bool(_REPO_ID.match(source))


def _offline() -> bool:
    from huggingface_hub import constants

    flag = os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE")
    return bool(constants.HF_HUB_OFFLINE) or flag


def resolve_hub(repo_id: str, cache_dir: str | os.PathLike | None = None,
                revision: str | None = None) -> str:
    """Local path of the weights file of Hub repo ``repo_id``, downloading it if needed."""
    from huggingface_hub import constants, hf_hub_download, try_to_load_from_cache
    from huggingface_hub.errors import EntryNotFoundError

    repo_id = repo_id.removeprefix(HUB_PREFIX)
    for filename in HUB_FILES:
        cached = try_to_load_from_cache(repo_id, filename, cache_dir=cache_dir,
                                        revision=revision)
        if isinstance(cached, str):
            return cached
    where = os.fspath(cache_dir) if cache_dir else constants.HF_HUB_CACHE
    if _offline():
        raise WeightsFileError(
            f"{repo_id}: none of {HUB_FILES} is in the Hugging Face cache at {where}, and "
            "offline mode is on (HF_HUB_OFFLINE); download it once with network "
            f"(`huggingface-cli download {repo_id}`) or pass a local file")
    for filename in HUB_FILES:
        try:
            return hf_hub_download(repo_id, filename, cache_dir=cache_dir, revision=revision)
        except EntryNotFoundError:
            continue
        except Exception as err:  # network, authentication, unknown repo
            raise WeightsFileError(f"could not fetch {filename} of {repo_id} from the Hub "
                                   f"and it is not cached at {where}: {err}") from err
    raise WeightsFileError(f"Hub repo {repo_id} has none of {HUB_FILES}")
