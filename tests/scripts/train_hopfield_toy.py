"""Train a toy Hopfield-energy P-MLP (cross-entropy read-out) with EPTrainer and save every rank's parameters;
the helper of the Hopfield DDP test. Single process or under ``torchrun`` (gloo on CPU).

    --out DIR  --batch B  --max_steps N
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

from mep_hf import EPHopfieldMLPConfig, EPHopfieldMLPForImageClassification, EPTrainer  # noqa: E402
from tests.conftest import toy_args, toy_images  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--max_steps", type=int, default=6)
    a = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    config = EPHopfieldMLPConfig(input_size=64, hidden_sizes=[24, 16], num_labels=4, loss="cross_entropy",
                                 free_steps=15, nudged_steps=6)
    model = EPHopfieldMLPForImageClassification(config)
    overrides = {"ddp_backend": "gloo"} if int(os.environ.get("WORLD_SIZE", "1")) > 1 else {}
    args = toy_args(Path(a.out), per_device_train_batch_size=a.batch, max_steps=a.max_steps, ep_beta=0.5,
                    ep_nudging="centered", learning_rate=1e-2, **overrides)
    trainer = EPTrainer(model=model, args=args, train_dataset=toy_images(128))
    trainer.train()
    rank = int(os.environ.get("RANK", 0))
    save_file({k: v.detach().contiguous() for k, v in trainer.model.named_parameters()},
              str(Path(a.out) / f"params_rank{rank}.safetensors"))
    if torch.distributed.is_initialized():
        # Everything is on disk. Tearing down a gloo group (at interpreter exit, or through the DDP reducer's
        # destructor after destroy_process_group) sometimes aborts ("terminate called without an active exception")
        # or blocks joining its threads: leave without the teardown.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


if __name__ == "__main__":
    main()
