"""Under torchrun (2 gloo processes): train the float64 char-LM on padded rows of uneven length by ``Trainer`` and
by ``EPTrainer`` with the same arguments; rank 0 saves both parameter updates. The helper of
``tests/test_trainer_parity.py::test_two_process_ddp_with_uneven_tokens_per_rank``.

    python -m torch.distributed.run --nproc_per_node 2 tests/scripts/parity_ddp.py --out DIR
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

from tests.parity import MODELS, padded_lm_data, train_update  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    out = Path(p.parse_args().out)
    torch.set_num_threads(1)
    data = padded_lm_data(16, seed=2)
    flags = dict(ddp_backend="gloo", per_device_train_batch_size=2, gradient_accumulation_steps=2)
    for method in ("ep", "backprop"):
        update, _ = train_update(method, MODELS["char_lm"](), data, out / method, **flags)
        if torch.distributed.get_rank() == 0:
            save_file({k: v.contiguous() for k, v in update.items()}, str(out / f"{method}_update.safetensors"))
    from mep_hf import EPTrainer, EPTrainingArguments

    trainer = EPTrainer(model=MODELS["char_lm"](), train_dataset=data, args=EPTrainingArguments(
        output_dir=str(out / "count"), use_cpu=True, report_to="none", seed=0, data_seed=0, **flags))
    first = next(iter(trainer.get_train_dataloader()))
    print(f"tokens_rank{torch.distributed.get_rank()}={int((first['labels'][:, 1:] != -100).sum())}", flush=True)
    if torch.distributed.is_initialized():
        # Everything is on disk. Tearing down a gloo group (at interpreter exit, or through the DDP reducer's
        # destructor after destroy_process_group) sometimes aborts ("terminate called without an active exception")
        # or blocks joining its threads: leave without the teardown.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


if __name__ == "__main__":
    main()
