"""``mep-hf-zoo``: package training runs as Hub repos, publish and pull them, keep the zoo index current.

    mep-hf-zoo package runs/zoo/mnist_mlp model_zoo/mnist_mlp      # run dir -> complete Hub repo folder
    mep-hf-zoo publish model_zoo/mnist_mlp <user-or-org>/mnist_mlp # create_repo + create_commit (HF_TOKEN / hf auth login)
    mep-hf-zoo pull <user-or-org>/mnist_mlp [dir]                  # snapshot_download, every file's SHA-256 checked
    mep-hf-zoo verify model_zoo/mnist_mlp                          # card accuracy == pipeline() (mep_hf's classes)
    mep-hf-zoo verify model_zoo/mnist_mlp --trust-remote-code      # ... with the folder's code, without mep_hf
    mep-hf-zoo index model_zoo [--check]                           # model_zoo/README.md table from the cards
    mep-hf-zoo regenerate [model_zoo/mnist_mlp ...] [--check]      # the folders' remote code from mep_hf
    mep-hf-zoo plan model_zoo/cifar10_convnet --dataset cifar10 --model ... --command ... --reason ...

The Hub endpoint is huggingface_hub's (``HF_ENDPOINT``, default https://huggingface.co).
"""

from __future__ import annotations

import argparse
import json
import sys


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mep-hf-zoo", formatter_class=argparse.RawDescriptionHelpFormatter,
        description=__doc__.split("\n\n")[0].replace("``", ""), epilog="\n\n".join(__doc__.split("\n\n")[1:]),
    )
    sub = parser.add_subparsers(dest="action", required=True)

    p = sub.add_parser("package", help="turn a training run directory into a complete Hub repo folder")
    p.add_argument("run_dir", help="output_dir of the run (save_model + save_metrics + save_state + run_info.json)")
    p.add_argument("zoo_dir", help="folder to write (e.g. model_zoo/mnist_mlp)")
    p.add_argument("--repo_id", help="repo id the card's usage lines name (default: mep-hf/<zoo_dir name>)")
    p.add_argument("--dataset", help="dataset key (mnist, fashion_mnist, cifar10, shakespeare); default: run_info.json")
    p.add_argument("--baseline", help="run dir of the same model trained by backprop, compared in the card")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty zoo_dir")

    p = sub.add_parser("publish", help="create_repo(exist_ok=True) + upload_folder")
    p.add_argument("zoo_dir")
    p.add_argument("repo_id", help="<user-or-org>/<name>")
    p.add_argument("--token", help="Hub token (default: HF_TOKEN or the one saved by `hf auth login`)")
    p.add_argument("--private", action="store_true", default=None, help="create the repo private")
    p.add_argument("--revision", help="branch to commit to (default main)")
    p.add_argument("--commit_message")

    p = sub.add_parser("pull", help="snapshot_download a zoo repo")
    p.add_argument("repo_id")
    p.add_argument("local_dir", nargs="?", help="copy the files here (default: the Hub cache only)")
    p.add_argument("--revision")
    p.add_argument("--cache_dir", help="Hub cache directory (default: HF_HUB_CACHE)")
    p.add_argument("--token")
    p.add_argument("--no-verify", dest="verify_files", action="store_false",
                   help="take the files unchecked (default: each is checked against the repo's zoo_manifest.json)")

    p = sub.add_parser("verify", help="reproduce an image card's accuracy with pipeline() (files checked first)")
    p.add_argument("zoo_dir")
    p.add_argument("--split", default="test")
    p.add_argument("--batch_size", type=int, default=1000)
    p.add_argument("--limit", type=int, help="only the first N examples (a smoke test: no comparison)")
    p.add_argument("--trust-remote-code", action="store_true",
                   help="run the folder's own code (pipeline(trust_remote_code=True) in a process without mep_hf); "
                        "default: mep_hf's classes, no code from the folder runs")
    p.add_argument("--no-verify", dest="verify_files", action="store_false",
                   help="skip the check of every file against the folder's zoo_manifest.json")

    p = sub.add_parser("index", help="regenerate <zoo_root>/README.md's table from the cards")
    p.add_argument("zoo_root", nargs="?", default="model_zoo")
    p.add_argument("--check", action="store_true", help="write nothing; exit 1 when the index is out of date")

    p = sub.add_parser("regenerate", help="rewrite packaged folders' remote code from mep_hf (weights untouched)")
    p.add_argument("zoo_dirs", nargs="*", help="packaged folders (default: every one under model_zoo/)")
    p.add_argument("--check", action="store_true", help="write nothing; exit 1 when a folder's code is out of date")

    p = sub.add_parser("plan", help="write the card of a zoo checkpoint that is not trained yet")
    p.add_argument("zoo_dir")
    p.add_argument("--dataset", required=True)
    p.add_argument("--model", required=True, help="what the model is, in words")
    p.add_argument("--command", required=True, help="the training command")
    p.add_argument("--reason", required=True, help="why it is not trained")
    p.add_argument("--overwrite", action="store_true")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from . import zoo

    if args.action == "package":
        out = zoo.package(args.run_dir, args.zoo_dir, repo_id=args.repo_id, dataset=args.dataset,
                          baseline=args.baseline, overwrite=args.overwrite)
        print(f"packaged {args.run_dir} -> {out}")
    elif args.action == "publish":
        info = zoo.publish(args.zoo_dir, args.repo_id, token=args.token, private=args.private,
                           revision=args.revision, commit_message=args.commit_message)
        print(f"published {args.zoo_dir} -> {info.commit_url}")
    elif args.action == "pull":
        print(zoo.pull(args.repo_id, args.local_dir, revision=args.revision, cache_dir=args.cache_dir,
                       token=args.token, verify_files=args.verify_files))
    elif args.action == "verify":
        result = zoo.verify(args.zoo_dir, split=args.split, batch_size=args.batch_size, limit=args.limit,
                            trust_remote_code=args.trust_remote_code, verify_files=args.verify_files)
        print(json.dumps(result))
    elif args.action == "index":
        if args.check:
            current = zoo.write_index(args.zoo_root, check=True)
            print(f"{args.zoo_root}/README.md is {'up to date' if current else 'OUT OF DATE: run mep-hf-zoo index'}")
            return 0 if current else 1
        zoo.write_index(args.zoo_root)
        print(f"wrote {args.zoo_root}/README.md")
    elif args.action == "regenerate":
        folders = args.zoo_dirs or zoo.packaged_folders()
        stale = {str(folder): zoo.regenerate(folder, check=args.check) for folder in folders}
        for folder, files in stale.items():
            state = "up to date" if not files else ("OUT OF DATE: " if args.check else "rewrote ") + ", ".join(files)
            print(f"{folder}: {state}")
        if args.check and any(stale.values()):
            return 1
    elif args.action == "plan":
        out = zoo.plan(args.zoo_dir, dataset=args.dataset, model=args.model, command=args.command,
                       reason=args.reason, overwrite=args.overwrite)
        print(f"wrote {out}/README.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
