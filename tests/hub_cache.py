"""A Hugging Face Hub cache laid out by hand, for tests that load Hub ids offline."""

from __future__ import annotations

import hashlib
import os
import shutil

import pytest


def hub_cache(root: str, repo_id: str, source: str) -> str:
    """``source`` as ``repo_id``'s ``model.safetensors`` in a cache laid out as huggingface_hub
    lays it out: ``refs/main`` names the commit, ``snapshots/<commit>/<file>`` links to
    ``blobs/<sha256>``. Returns the snapshot path."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    blob = hashlib.sha256(open(source, "rb").read()).hexdigest()
    repo = os.path.join(root, "models--" + repo_id.replace("/", "--"))
    for folder in ("refs", "blobs", os.path.join("snapshots", commit)):
        os.makedirs(os.path.join(repo, folder))
    open(os.path.join(repo, "refs", "main"), "w").write(commit)
    shutil.copy(source, os.path.join(repo, "blobs", blob))
    link = os.path.join(repo, "snapshots", commit, "model.safetensors")
    os.symlink(os.path.join("..", "..", "blobs", blob), link)
    return link


def go_offline(tmp_path: object, monkeypatch: pytest.MonkeyPatch) -> str:
    """Offline mode with an empty Hub cache under ``tmp_path``; the cache root."""
    import huggingface_hub.constants

    root = os.path.join(str(tmp_path), "hub")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", root)
    return root
