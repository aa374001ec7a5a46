"""`var train` under FSDP on CPU processes (gloo), for tests/test_var_train.py: run it with torch.distributed.run.

FSDP is meant for GPUs and two checks refuse it on a CPU: Lightning's accelerator connector (the `fsdp`
strategy needs a GPU accelerator) and torch's FSDP, which, given no device (Lightning passes the CPU's
device index, None), looks for an accelerator. A subclass of Lightning's FSDPStrategy passes the CPU as
the device; and the full state dict is gathered without `offload_to_cpu` (Lightning's setting, which
on a CPU-only machine crashes torch's FSDP while it clones the gathered tensors). Everything else - the
wrapping policy, sharding, the EMA, checkpoints, resume, export - is the project's and Lightning's own code.
"""

import sys

import lightning.pytorch.strategies.fsdp as lightning_fsdp
import torch
from torch.distributed.fsdp import FullStateDictConfig, FullyShardedDataParallel, StateDictType
from torch.distributed.fsdp.api import FullOptimStateDictConfig

import scaffold.sharding
from app.cli import main


class CPUFSDPStrategy(lightning_fsdp.FSDPStrategy):
    def _setup_model(self, model: torch.nn.Module) -> FullyShardedDataParallel:
        return FullyShardedDataParallel(
            model,
            sharding_strategy=self.sharding_strategy,
            mixed_precision=self.mixed_precision_config,
            device_id=torch.device("cpu"),
            **self.kwargs,
        )


def full_state_dict_context(module, world_size: int, rank0_only: bool = True):
    return FullyShardedDataParallel.state_dict_type(
        module,
        StateDictType.FULL_STATE_DICT,
        FullStateDictConfig(offload_to_cpu=False, rank0_only=rank0_only),
        FullOptimStateDictConfig(offload_to_cpu=False, rank0_only=rank0_only),
    )


if __name__ == "__main__":
    lightning_fsdp._get_full_state_dict_context = full_state_dict_context
    scaffold.sharding.FSDPStrategy = CPUFSDPStrategy
    sys.exit(main(sys.argv[1:]))
