"""What both stages stand on: user errors, typed config loading, atomic writes and checkpoint I/O.

It imports neither `tokenizer` nor `var`; both import it (docs/architecture.md section 2).
"""

from .checkpoint import (
    CheckpointError,
    check_state_dict,
    hub_download,
    load_state_dict_strict,
    read_state_dict,
    save_state_dict,
    sha256_of,
)
from .config import ConfigError, config_to_dict, load_config
from .errors import UserError
from .io import DiskFullError, WriteError, atomic_open, atomic_path, remove_stale_temporaries, write_atomic

__all__ = [
    "CheckpointError",
    "ConfigError",
    "DiskFullError",
    "UserError",
    "WriteError",
    "atomic_open",
    "atomic_path",
    "check_state_dict",
    "config_to_dict",
    "hub_download",
    "load_config",
    "load_state_dict_strict",
    "read_state_dict",
    "remove_stale_temporaries",
    "save_state_dict",
    "sha256_of",
    "write_atomic",
]
