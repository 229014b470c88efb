"""``mep-hf-zoo publish`` and ``pull``: a zoo folder to and from the Hub, through huggingface_hub."""

from __future__ import annotations

from pathlib import Path

from huggingface_hub import ModelCard

from .specs import ZooError


def publish(zoo_dir: str | Path, repo_id: str, *, token: str | None = None, private: bool | None = None,
            revision: str | None = None, commit_message: str | None = None):
    """``create_repo(exist_ok=True)`` + ``upload_folder``: the zoo folder becomes (a commit of) ``repo_id``.

    The card's usage lines are first rewritten to name ``repo_id`` when it was packaged for another id. The token
    is huggingface_hub's usual one (``HF_TOKEN`` or ``hf auth login``) unless given."""
    from huggingface_hub import HfApi

    zoo_dir = Path(zoo_dir)
    readme = zoo_dir / "README.md"
    if not readme.is_file():
        raise ZooError(f"{zoo_dir} has no README.md: package it first (mep-hf-zoo package <run_dir> {zoo_dir})")
    api = HfApi(token=token)
    url = api.create_repo(repo_id, exist_ok=True, private=private)
    named = (ModelCard.load(readme).data.get("mep_hf") or {}).get("repo_id")
    if named and named != url.repo_id:  # the card's usage lines name the repo it is published as
        readme.write_text(readme.read_text(encoding="utf-8").replace(named, url.repo_id), encoding="utf-8")
    return api.upload_folder(
        repo_id=url.repo_id, folder_path=zoo_dir, revision=revision,
        commit_message=commit_message or f"Upload {zoo_dir.name} with mep-hf-zoo",
    )


def pull(repo_id: str, local_dir: str | Path | None = None, *, revision: str | None = None,
         cache_dir: str | Path | None = None, token: str | None = None) -> str:
    """``snapshot_download``: the repo's files in the Hub cache (or ``local_dir``); returns the folder."""
    from huggingface_hub import snapshot_download

    return snapshot_download(repo_id, local_dir=local_dir, revision=revision, cache_dir=cache_dir, token=token)
