"""The training script runs, is deterministic for a seed and writes loadable safetensors."""

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from banana.compiler.zoo import DIT_CONFIGS, DiT
from banana.compiler.zoo.train_nano_dit import main


def test_short_training_run_is_deterministic(tmp_path):
    threads = torch.get_num_threads()
    try:
        for name in ("a", "b"):
            main(["--out", str(tmp_path / f"{name}.safetensors"), "--steps", "3", "--seed", "4", "--batch", "8"])
    finally:
        torch.set_num_threads(threads)
    a, b = load_file(str(tmp_path / "a.safetensors")), load_file(str(tmp_path / "b.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    DiT(DIT_CONFIGS["nano"]).load_state_dict(a, strict=True)
    with safe_open(str(tmp_path / "a.safetensors"), framework="pt") as f:
        meta = f.metadata()
    assert meta["steps"] == "3" and meta["seed"] == "4" and meta["config"] == "nano"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
