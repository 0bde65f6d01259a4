"""Where a model comes from: a local folder, or a Hugging Face hub id resolved to one commit.

``student.path`` and ``teachers[].path`` take either a local folder (as before) or ``org/name``,
optionally pinned as ``org/name@revision`` (branch, tag or commit). A path that exists locally
always wins, so ``models/smollm2-135m-instruct`` stays a folder even though it looks like an id.

A hub id is resolved once per process (at plan time) with ``huggingface_hub.snapshot_download``:
online it asks the hub which commit the revision points at now and downloads what is missing;
with ``HF_HUB_OFFLINE=1`` it reads only the local hub cache (``refs/<branch>`` there). Either way
the result is a snapshot folder ``…/models--org--name/snapshots/<commit>``, whose commit is what
``model_fingerprint`` hashes: a branch that moved is a different teacher, with its own cache.

Corpus sources name hub *datasets* the same way (``corpus.sources[].dataset``): ``resolve_dataset``
is the same resolution for a dataset repo (``…/datasets--org--name/snapshots/<commit>``), whose
commit enters the corpus key.
"""

from __future__ import annotations

import functools
import os
import re
from dataclasses import dataclass
from pathlib import Path

HUB_ID = re.compile(r"^(?P<repo>[A-Za-z0-9][\w.-]*/[\w.-]+)(?:@(?P<revision>[\w./-]+))?$")
"""``org/name`` or ``org/name@revision``: exactly one slash before the optional ``@``."""
_TRUE = {"1", "ON", "YES", "TRUE"}
_SNAPSHOT = re.compile(r"/snapshots/([0-9a-f]{40})(/|$)")


@dataclass(frozen=True)
class ResolvedSource:
    """A model spec (or a dataset spec, `resolve_dataset`) as configured and the local folder it
    resolved to."""

    spec: str
    folder: Path
    repo_id: str | None = None
    """The hub id, or None for a local folder."""
    revision: str | None = None
    """The commit the hub id resolved to (40 hex digits), or None for a local folder."""

    @property
    def pinned(self) -> str:
        """The spec that resolves to this very model again: ``org/name@<commit>`` for a hub id."""
        return f"{self.repo_id}@{self.revision}" if self.repo_id else self.spec


def hub_offline() -> bool:
    """Whether the hub may not be contacted (HF_HUB_OFFLINE, read now, not at import)."""
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE) or os.environ.get("HF_HUB_OFFLINE", "").upper() in _TRUE


def hub_cache() -> Path:
    """The hub cache directory as the environment says now (HF_HUB_CACHE, else HF_HOME/hub)."""
    from huggingface_hub import constants

    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    return Path(constants.HF_HUB_CACHE)


def resolve_model(spec: str | os.PathLike[str]) -> ResolvedSource:
    """The local folder of ``spec`` (module docstring); ``ValueError`` naming the id and the fix
    when a hub id cannot be resolved. A spec that is neither an existing path nor a hub id is
    returned as a folder, for the caller's own check to report."""
    spec = str(spec)
    match = HUB_ID.match(spec)
    if Path(spec).expanduser().exists() or match is None:
        return ResolvedSource(spec, Path(spec).expanduser())
    return _resolve_hub(spec, match["repo"], match["revision"], hub_cache(), hub_offline())


def hub_revision(folder: Path) -> str | None:
    """The commit hash when ``folder`` is a Hugging Face hub cache snapshot, else None."""
    match = _SNAPSHOT.search(folder.resolve().as_posix())
    return match.group(1) if match else None


def model_folder(spec: str | os.PathLike[str]) -> Path:
    """``resolve_model(spec).folder``: what every loader of a model is given."""
    return resolve_model(spec).folder


def resolve_dataset(spec: str) -> ResolvedSource:
    """The snapshot folder of the hub dataset ``org/name[@revision]``, resolved once per process
    like a model id (module docstring); ``ValueError`` naming the id and the fix when it cannot be."""
    match = HUB_ID.match(spec)
    if match is None:
        raise ValueError(
            f"dataset {spec!r} is not a hub dataset id: write org/name or org/name@revision, or use "
            "corpus.sources[].path for local files"
        )
    return _resolve_hub(spec, match["repo"], match["revision"], hub_cache(), hub_offline(), "dataset")


@functools.cache
def _resolve_hub(
    spec: str, repo_id: str, revision: str | None, cache: Path, offline: bool, repo_type: str = "model"
) -> ResolvedSource:
    from huggingface_hub import snapshot_download

    try:
        folder = Path(
            snapshot_download(
                repo_id, repo_type=repo_type, revision=revision, cache_dir=cache, local_files_only=offline
            )
        )
    except (OSError, ValueError) as e:  # every hub and cache error is an OSError subclass
        where = f"the local Hugging Face cache {cache}" if offline else "the Hugging Face hub"
        download = " ".join(
            ["hf download", repo_id]
            + ([f"--repo-type {repo_type}"] if repo_type != "model" else [])
            + ([f"--revision {revision}"] if revision else [])
        )
        fix = (
            f"download it where there is network (`{download}`) and copy the cache here, or unset "
            "HF_HUB_OFFLINE"
            if offline
            else "check the id and revision and your network or HF_TOKEN"
        )
        local = (
            "point the path at a local model folder (`make setup` makes the demo ones)"
            if repo_type == "model"
            else "point corpus.sources[].path at local files instead"
        )
        not_local = "is not a local folder and " if repo_type == "model" else ""
        raise ValueError(
            f"{repo_type} {spec!r} {not_local}could not be resolved from {where} "
            f"({type(e).__name__}): {fix}; or {local}"
        ) from e
    commit = hub_revision(folder)
    if commit is None:  # a hand-edited or damaged cache: refs/<branch> names no commit
        ref = f"refs/{revision or 'main'}"
        raise ValueError(
            f"model {spec!r}: the Hugging Face cache resolves {ref} to {folder}, which is no snapshot "
            f"of a commit (its {ref} must hold a 40-hex commit hash): delete {folder.parent.parent} and "
            f"download the model again (`hf download {repo_id}`), or pin a commit ({repo_id}@<commit>)"
        )
    return ResolvedSource(spec, folder, repo_id, commit)
