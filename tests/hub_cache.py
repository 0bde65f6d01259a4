"""A Hugging Face hub cache laid out by hand, as huggingface_hub lays it out, for offline tests of
hub ids (models and datasets): ``<type>s--org--name/{blobs, snapshots/<commit>, refs/<branch>}``."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path


def repo_folder(hub: Path, repo_id: str, repo_type: str = "model") -> Path:
    """The folder of a repo in the hub cache: ``models--org--name`` or ``datasets--org--name``."""
    return hub / f"{repo_type}s--{repo_id.replace('/', '--')}"


def add_snapshot(hub: Path, repo_id: str, commit: str, files: Path, repo_type: str = "model") -> Path:
    """The files under ``files`` (subfolders kept) as the snapshot ``commit`` of ``repo_id`` in the
    hub cache ``hub``, the way huggingface_hub lays it out: content in blobs/, symlinks in
    snapshots/<commit>/."""
    repo = repo_folder(hub, repo_id, repo_type)
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (repo / "blobs").mkdir(exist_ok=True)
    for path in sorted(p for p in files.rglob("*") if p.is_file()):
        blob = repo / "blobs" / hashlib.sha256(path.read_bytes()).hexdigest()
        if not blob.exists():
            shutil.copyfile(path, blob)
        link = snapshot / path.relative_to(files)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(Path(*[".."] * (len(path.relative_to(files).parts) + 1), "blobs", blob.name))
    return snapshot


def point_branch(hub: Path, repo_id: str, branch: str, commit: str, repo_type: str = "model") -> None:
    refs = repo_folder(hub, repo_id, repo_type) / "refs"
    refs.mkdir(parents=True, exist_ok=True)
    (refs / branch).write_text(commit)
