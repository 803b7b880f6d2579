"""A sweep file's ``resources``: the keys it may hold, each with its type and range, checked when the file is
read (``alphaflow.launch.sweeps.load_sweep``), so a bad value is refused in one line before anything is submitted
or written, with ``--dry-run`` and ``--smoke`` too, instead of inside submitit or as a job that dies at once.

    timeout_min        whole minutes >= 1                    the job's time limit
    nodes              whole number >= 1
    gpus_per_node      whole number >= 0                     (0: a CPU job)
    tasks_per_node     whole number >= 1                     DDP ranks per node
    cpus_per_task      whole number >= 1
    mem_gb             a number > 0                          GB per node
    partition          a non-empty string
    array_parallelism  whole number >= 1                     array tasks running at once (SLURM)
    signal_delay_s     whole seconds >= 0                    SIGUSR2 this long before the time limit
    max_num_timeout    whole number >= 0                     requeues after a time limit
    slurm              a mapping of sbatch option → string   free-form: account, qos, constraint, ...
                       (a number, or true for a bare flag such as exclusive, also accepted)

A key given as null counts as left out. submitit is imported by ``alphaflow.launch.executors``, which fills in
the defaults (``with_defaults``: the requeue budget, the signal delay the sweep's largest checkpoint needs) and
turns the checked mapping into executor parameters.
"""

from __future__ import annotations

import difflib
import re
from typing import Any

# Sweep-file ``resources`` keys → submitit AutoExecutor parameters.
RESOURCES = {
    "timeout_min": "timeout_min", "nodes": "nodes", "gpus_per_node": "gpus_per_node",
    "tasks_per_node": "tasks_per_node", "cpus_per_task": "cpus_per_task", "mem_gb": "mem_gb",
    "partition": "slurm_partition", "array_parallelism": "slurm_array_parallelism",
    "signal_delay_s": "slurm_signal_delay_s",  # SIGUSR2 this many seconds before the time limit
    "slurm": "slurm_additional_parameters",  # free-form: account, qos, constraint, ...
    "max_num_timeout": "max_num_timeout",  # requeues after a time limit; an argument of the executor itself
}
DEFAULT_RESOURCES = {"timeout_min": 60, "nodes": 1, "tasks_per_node": 1, "cpus_per_task": 2}
# submitit's requeue budget: how many times a job that reaches its time limit is requeued (preemptions do not count).
# submitit's own default, 3, ends a run at its 4th time limit although every segment resumes from the checkpoint
# written at the signal and so makes progress; a long ImageNet run may need more segments than that. 20 still
# bounds a job that keeps coming back without finishing. A run stopped by the budget is "incomplete", and the next
# ``alphaflow sweep`` submits it again.
DEFAULT_MAX_NUM_TIMEOUT = 20

# key → (least whole number, what it counts) for the whole-number keys
_WHOLE = {"timeout_min": (1, "minutes"), "nodes": (1, "nodes"), "gpus_per_node": (0, "GPUs"),
          "tasks_per_node": (1, "tasks"), "cpus_per_task": (1, "CPUs"), "array_parallelism": (1, "array tasks"),
          "signal_delay_s": (0, "seconds"), "max_num_timeout": (0, "requeues")}
_SBATCH_OPTION = re.compile(r"[A-Za-z][A-Za-z0-9_-]*")


def _is_whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_resource(key: str, value: Any) -> None:
    """Refuse ``resources.<key>: value`` when the key is unknown or the value has the wrong type or range
    (the table of the module docstring); ``None`` (left out) always passes. Raises ValueError naming the key."""
    if key not in RESOURCES:
        close = difflib.get_close_matches(str(key), list(RESOURCES), n=1, cutoff=0.4)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"unknown resources [{key!r}]{hint}; expected some of {sorted(RESOURCES)}")
    if value is None:
        return
    if key in _WHOLE:
        least, unit = _WHOLE[key]
        if not _is_whole(value) or value < least:
            raise ValueError(f"resources.{key} must be a whole number of {unit} >= {least}, got {value!r}")
    elif key == "mem_gb":
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 or value == float("inf"):
            raise ValueError(f"resources.mem_gb must be a number of GB > 0 (e.g. 32 or 0.5), got {value!r}")
    elif key == "partition":
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"resources.partition must be a SLURM partition name (a non-empty string), got {value!r}")
    elif key == "slurm":
        _check_slurm(value)


def _check_slurm(value: Any) -> None:
    if not isinstance(value, dict):
        raise ValueError(f"resources.slurm must be a mapping of sbatch options to strings (e.g. {{account: my-account, "
                         f"qos: normal}}), got {value!r}")
    for option, setting in value.items():
        if not isinstance(option, str) or not _SBATCH_OPTION.fullmatch(option):
            raise ValueError(f"resources.slurm: {option!r} is not an sbatch option name (letters, digits, - and _, "
                             "e.g. account)")
        plain = isinstance(setting, str) and setting.strip() != ""
        if not (plain or setting is True or (isinstance(setting, (int, float)) and not isinstance(setting, bool))):
            raise ValueError(f"resources.slurm.{option} must be a string (or a number, or true for a bare flag), "
                             f"got {setting!r}")


def check_resources(resources: Any) -> dict[str, Any]:
    """The sweep file's ``resources`` mapping, every key and value checked (``check_resource``); ``None`` → {}."""
    if resources is None:
        return {}
    if not isinstance(resources, dict):
        raise ValueError(f"'resources' must be a mapping such as {{timeout_min: 60, mem_gb: 32}}, got {resources!r}")
    for key, value in resources.items():
        check_resource(key, value)
    return dict(resources)


def max_num_timeout(resources: dict[str, Any], default: int = DEFAULT_MAX_NUM_TIMEOUT) -> int:
    """``resources.max_num_timeout`` checked (a whole number >= 0), or ``default`` when left out."""
    value = resources.get("max_num_timeout")
    check_resource("max_num_timeout", value)
    return default if value is None else value
