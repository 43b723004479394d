"""Hugging Face Hub ids (``timm/seresnext50_32x4d.racm_in1k``) to local files.

The local cache (laid out by ``huggingface_hub``) is tried first, so nothing touches the
network when the file is there; offline mode (``HF_HUB_OFFLINE=1``) never downloads.
"""

from __future__ import annotations

import os
import re
import socket
import urllib.parse

from resnext_jax.weights.errors import WeightsFileError

# Preferred first: our own file (save_pretrained also writes model.safetensors), then timm's.
# What a save_pretrained folder (or a Hub repo) holds: our own format, and the tensors in a
# PyTorch layout.
NATIVE_FILE, SAFETENSORS_FILE = "model.msgpack", "model.safetensors"
HUB_FILES = (NATIVE_FILE, SAFETENSORS_FILE, "pytorch_model.bin")
HUB_PREFIX = "hf-hub:"
_REPO_ID = re.compile(r"^[\w.-]+/[\w.-]+$")


def is_hub_id(source: str) -> bool:
    """``org/name`` or ``hf-hub:org/name``."""
    return source.startswith(HUB_PREFIX) or bool(_REPO_ID.match(source))


def _offline() -> bool:
    from huggingface_hub import constants

    flag = os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE")
    return bool(constants.HF_HUB_OFFLINE) or flag


def _unreachable(endpoint: str, timeout: float = 3.0) -> str | None:
    """Why the Hub's host cannot be reached (a few seconds at most), or None when it can:
    huggingface_hub itself retries for half a minute before saying so."""
    url = urllib.parse.urlsplit(endpoint)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname, port), timeout=timeout).close()
    except OSError as err:
        return f"{type(err).__name__}: {err}"
    return None


def resolve_hub(repo_id: str, cache_dir: str | os.PathLike | None = None,
                revision: str | None = None) -> str:
    """Local path of the weights file of Hub repo ``repo_id``, downloading it if needed."""
    from huggingface_hub import constants, hf_hub_download, try_to_load_from_cache
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
    )

    repo_id = repo_id.removeprefix(HUB_PREFIX)
    for filename in HUB_FILES:
        cached = try_to_load_from_cache(repo_id, filename, cache_dir=cache_dir,
                                        revision=revision)
        if isinstance(cached, str):
            return cached
    where = os.fspath(cache_dir) if cache_dir else constants.HF_HUB_CACHE
    fetch = (f"download it where there is network (`hf download {repo_id}`, then copy the "
             f"cache to {where}) or pass a local file")
    if _offline():
        raise WeightsFileError(f"{repo_id}: none of {HUB_FILES} is in the Hugging Face cache "
                               f"at {where}, and offline mode is on (HF_HUB_OFFLINE); {fetch}")
    why = _unreachable(constants.ENDPOINT)
    if why:
        raise WeightsFileError(f"{repo_id} is not in the Hugging Face cache at {where}, and "
                               f"the Hub ({constants.ENDPOINT}) cannot be reached ({why}); "
                               f"connect and retry, or {fetch}")
    for filename in HUB_FILES:
        try:
            return hf_hub_download(repo_id, filename, cache_dir=cache_dir, revision=revision,
                                   etag_timeout=5)
        except GatedRepoError as err:
            raise WeightsFileError(f"{repo_id} is gated: accept its terms at "
                                   f"{constants.ENDPOINT}/{repo_id} and log in with "
                                   "`hf auth login`") from err
        except RepositoryNotFoundError as err:
            raise WeightsFileError(f"there is no Hub repository {repo_id} (or it is private: "
                                   "log in with `hf auth login`)") from err
        except LocalEntryNotFoundError as err:  # the network went away after the probe
            raise WeightsFileError(f"{repo_id} is not cached at {where} and the Hub could not "
                                   f"be reached; connect and retry, or {fetch}") from err
        except EntryNotFoundError:
            continue
        except Exception as err:  # noqa: BLE001 - HTTP errors, disk full while downloading
            raise WeightsFileError(f"could not fetch {filename} of {repo_id} from the Hub "
                                   f"({type(err).__name__}: {err})") from err
    raise WeightsFileError(f"Hub repository {repo_id} has none of {HUB_FILES}")
