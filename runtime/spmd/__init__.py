"""SPMD over a ProcMesh (Meta Monarch's ``monarch.spmd``): torchrun's environment on every proc,
and ``run_spmd`` for unchanged torchrun-style scripts. See docs/tensors.md."""

from monarch.tensor.spmd import (
    SPMDActor,
    run_spmd,
    setup_torch_elastic_env,
    setup_torch_elastic_env_async,
)

__all__ = ["SPMDActor", "run_spmd", "setup_torch_elastic_env", "setup_torch_elastic_env_async"]
