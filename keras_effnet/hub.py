"""Weight files from the Hugging Face Hub, through huggingface_hub (its cache,
`HF_HUB_OFFLINE`, `HF_ENDPOINT` mirrors, `HF_HUB_CACHE`, revisions). Only safetensors
files are fetched: nothing from the network is ever unpickled."""

from __future__ import annotations

import hashlib
import os
import re

__all__ = ["cache_dir", "download", "parse_hub_spec", "sha256_of", "verify_file"]

_HUB_SPEC = re.compile(r"hub:(?P<repo>[\w.-]+/[\w.-]+)(?:@(?P<revision>[\w.-]+))?"
                       r"(?::(?P<filename>[\w./-]+))?")


def parse_hub_spec(spec: str) -> tuple[str, str, str]:
    """'hub:<owner>/<repo>[@revision][:file.safetensors]' -> (repo id, revision, filename)."""
    match = _HUB_SPEC.fullmatch(spec)
    if match is None:
        raise ValueError(f"weights={spec!r}: expected 'hub:<owner>/<repo>', optionally with "
                         "'@<revision>' and ':<file>.safetensors' (e.g. "
                         "'hub:timm/tf_efficientnet_b3.ns_jft_in1k@main:model.safetensors')")
    return (match["repo"], match["revision"] or "main",
            match["filename"] or "model.safetensors")


def sha256_of(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def cache_dir(constants=None) -> str:
    """The Hub cache: `$HF_HUB_CACHE` read at each call (huggingface_hub reads it once, at
    import), else huggingface_hub's default (`$HF_HOME/hub`, `~/.cache/huggingface/hub`)."""
    if os.environ.get("HF_HUB_CACHE"):
        return os.path.expanduser(os.environ["HF_HUB_CACHE"])
    if constants is None:
        from huggingface_hub import constants
    return constants.HF_HUB_CACHE


def _how_to_fetch(repo_id: str, filename: str, revision: str, cache: str) -> str:
    return (f"{repo_id} file {filename} at revision {revision} is not in the Hugging Face "
            f"cache {cache}. On a machine with network: `hf download {repo_id} {filename} "
            f"--revision {revision}` (or huggingface_hub.hf_hub_download), then copy its "
            f"cache folder (models--{repo_id.replace('/', '--')}) into {cache}, or set "
            "HF_HUB_CACHE to a copy; a mirror works through HF_ENDPOINT")


def download(repo_id: str, filename: str = "model.safetensors", revision: str = "main",
             sha256: str | None = None, verify: bool = True) -> tuple[str, str]:
    """The local path of `filename` in `repo_id` at `revision`, downloaded once into the
    Hugging Face cache, and its sha256. The sha256 must equal `sha256` when given, and
    the Hub's content hash (the cached blob's name) when the file is a Hub LFS blob.
    With verify=False the file is not read: the hash returned is the one it must have
    (pinned, or the blob's name; None when neither is known), for a caller that may have
    a product of it already made under that hash and calls `verify_file` before it
    reads the file itself."""
    if not filename.endswith(".safetensors"):
        raise ValueError(f"{repo_id}/{filename}: only .safetensors files are downloaded "
                         "(a pickle from the network could run code)")
    try:
        import huggingface_hub
        from huggingface_hub import constants
        from huggingface_hub.errors import (
            EntryNotFoundError,
            LocalEntryNotFoundError,
            RepositoryNotFoundError,
            RevisionNotFoundError,
        )
    except ImportError as exc:  # pragma: no cover - an install requirement
        raise ImportError("weights from the Hub need huggingface_hub: pip install "
                          "huggingface_hub") from exc
    cache = cache_dir(constants)
    try:
        path = huggingface_hub.hf_hub_download(repo_id, filename, revision=revision,
                                               cache_dir=cache)
    except LocalEntryNotFoundError as exc:  # offline, or the network failed
        raise OSError(_how_to_fetch(repo_id, filename, revision, cache)) from exc
    except (RepositoryNotFoundError, RevisionNotFoundError, EntryNotFoundError) as exc:
        raise ValueError(f"the Hub has no {repo_id} / {filename} at revision {revision} "
                         f"({type(exc).__name__})") from exc
    blob = os.path.basename(os.path.realpath(path))
    expected = sha256 or (blob if re.fullmatch(r"[0-9a-f]{64}", blob) else None)
    if not verify:
        return path, expected
    return path, verify_file(path, expected, f"{repo_id}/{filename}@{revision} in {cache}",
                             pinned=sha256 is not None)


def verify_file(path: str, expected: str | None, where: str, pinned: bool = False) -> str:
    """The file's sha256, ValueError when it is not `expected` (None: anything)."""
    found = sha256_of(path)
    if expected is not None and found != expected:
        raise ValueError(
            f"{where} has sha256 {found}, expected {expected} "
            f"({'pinned' if pinned else 'the Hub content hash'}): the file is corrupt or "
            "was replaced. Delete it from the cache and download it again.")
    return found
