"""EP in training loops other than the Hugging Face Trainer's. Each integration is imported on its own, so its
framework stays an optional dependency: ``mep_hf.integrations.lightning`` (PyTorch Lightning, ``pip install
mep-hf[lightning]``). A plain PyTorch loop needs none: :func:`mep_hf.ep_backward`."""
