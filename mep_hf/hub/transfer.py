"""``mep-hf-zoo publish`` and ``pull``: a zoo folder to and from the Hub, through huggingface_hub, with every file
checked against the folder's record of SHA-256 digests (``zoo_manifest.json``).

``package`` and ``regenerate`` write the record; ``publish`` uploads the folder as it is plus the card naming the
repo and the record of exactly what it uploads, in one commit, and changes no local file; ``pull`` and ``verify``
refuse, naming the file, a folder whose files differ from the record, lack one it lists or hold one it does not.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from huggingface_hub import ModelCard

from ..checkpointing import sha256_file
from .specs import ZooError

FILES_RECORD = "zoo_manifest.json"
# not part of a zoo folder: the Hub's own attributes file, huggingface_hub's local_dir metadata, git's folder
NOT_RECORDED = (".gitattributes",)
NOT_RECORDED_DIRS = (".cache", ".git")


def folder_files(folder: str | Path) -> list[str]:
    """The files of a zoo folder (relative POSIX paths), the record and the Hub's own files left out."""
    found = []
    for root, dirs, names in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not (Path(root) == Path(folder) and d in NOT_RECORDED_DIRS))
        found += [Path(root, n).relative_to(folder).as_posix() for n in sorted(names)]
    return [rel for rel in found if rel not in (FILES_RECORD, *NOT_RECORDED)]


def files_record(folder: str | Path, replaced: dict[str, bytes] | None = None, dropped=()) -> str:
    """The record (JSON text) of every file's size and SHA-256; ``replaced``: files to record with other contents
    than the folder's, ``dropped``: files to leave out (both: what the folder will hold after a rewrite)."""
    import hashlib

    replaced = replaced or {}
    files = {}
    for rel in sorted((set(folder_files(folder)) | set(replaced)) - set(dropped)):
        if rel in replaced:
            files[rel] = {"size": len(replaced[rel]), "sha256": hashlib.sha256(replaced[rel]).hexdigest()}
        else:
            path = Path(folder, rel)
            files[rel] = {"size": path.stat().st_size, "sha256": sha256_file(str(path))}
    return json.dumps({"format": 1, "files": files}, indent=1) + "\n"


def write_files_record(folder: str | Path) -> Path:
    path = Path(folder, FILES_RECORD)
    path.write_text(files_record(folder), encoding="utf-8")
    return path


def check_files(folder: str | Path) -> None:
    """Refuse, naming the file, a folder whose files are not exactly those its record lists, with those digests."""
    folder = Path(folder)
    try:
        record = json.loads((folder / FILES_RECORD).read_text(encoding="utf-8"))["files"]
    except FileNotFoundError:
        raise ZooError(f"{folder} holds no {FILES_RECORD}, so its files cannot be checked (it was not packaged or "
                       "published by mep-hf-zoo, or by an older one); pass verify_files=False (--no-verify) to take "
                       "it unchecked") from None
    except (ValueError, KeyError, TypeError) as err:
        raise ZooError(f"{folder / FILES_RECORD} is damaged ({err})") from None
    unlisted = sorted(set(folder_files(folder)) - set(record))
    if unlisted:
        raise ZooError(f"{folder} holds {', '.join(unlisted[:5])}, which {FILES_RECORD} does not list: refused "
                       "(a file added after the record was written, e.g. code the model would run)")
    for rel, entry in record.items():
        path = folder / rel
        if not path.is_file():
            raise ZooError(f"{folder} lacks {rel}, which {FILES_RECORD} lists")
        if path.stat().st_size != entry["size"] or sha256_file(str(path)) != entry["sha256"]:
            raise ZooError(f"{folder}: {rel} differs from the file that was published (its SHA-256 is not the one "
                           f"{FILES_RECORD} records): refused, it was changed or damaged on the way")


def publish(zoo_dir: str | Path, repo_id: str, *, token: str | None = None, private: bool | None = None,
            revision: str | None = None, commit_message: str | None = None):
    """``create_repo(exist_ok=True)`` + one ``create_commit``: ``repo_id`` becomes exactly the zoo folder (files it
    does not hold are deleted there), with the card's usage lines naming ``repo_id`` and a record of every uploaded
    file's SHA-256. No local file is changed: the card and record that differ from the folder's are uploaded from
    memory. The token is huggingface_hub's usual one (``HF_TOKEN`` or ``hf auth login``) unless given."""
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi

    zoo_dir = Path(zoo_dir)
    readme = zoo_dir / "README.md"
    if not readme.is_file():
        raise ZooError(f"{zoo_dir} has no README.md: package it first (mep-hf-zoo package <run_dir> {zoo_dir})")
    api = HfApi(token=token)
    url = api.create_repo(repo_id, exist_ok=True, private=private)
    card = readme.read_text(encoding="utf-8")
    named = (ModelCard(card).data.get("mep_hf") or {}).get("repo_id")
    if named and named != url.repo_id:  # the card's usage lines name the repo it is published as
        card = card.replace(named, url.repo_id)
    uploaded = {"README.md": card.encode("utf-8")}
    uploaded[FILES_RECORD] = files_record(zoo_dir, uploaded).encode("utf-8")
    files = [rel for rel in folder_files(zoo_dir) if rel not in uploaded]
    operations = [CommitOperationAdd(path_in_repo=rel, path_or_fileobj=str(zoo_dir / rel)) for rel in files]
    operations += [CommitOperationAdd(path_in_repo=rel, path_or_fileobj=data) for rel, data in uploaded.items()]
    present = set(api.list_repo_files(url.repo_id, revision=revision))
    operations += [CommitOperationDelete(path_in_repo=rel)
                   for rel in sorted(present - set(files) - set(uploaded) - set(NOT_RECORDED))]
    return api.create_commit(repo_id=url.repo_id, operations=operations, revision=revision,
                             commit_message=commit_message or f"Upload {zoo_dir.name} with mep-hf-zoo")


def pull(repo_id: str, local_dir: str | Path | None = None, *, revision: str | None = None,
         cache_dir: str | Path | None = None, token: str | None = None, verify_files: bool = True) -> str:
    """``snapshot_download``: the repo's files in the Hub cache (or ``local_dir``); returns the folder, once every
    file is checked against the repo's ``zoo_manifest.json`` (``verify_files=False``: unchecked)."""
    from huggingface_hub import snapshot_download

    folder = snapshot_download(repo_id, local_dir=local_dir, revision=revision, cache_dir=cache_dir, token=token)
    if verify_files:
        try:
            check_files(folder)
        except ZooError as err:
            raise ZooError(f"pulled {repo_id}, but {err}. Do not load it: the files stay in {folder}") from None
    return folder
