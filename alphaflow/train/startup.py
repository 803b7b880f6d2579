"""What the trainer does with its run folder before the first step (``alphaflow.train.loop``): take the folder,
record or check its config, resume from the newest usable checkpoint, and put metrics.jsonl in order. Every
decision that changes or keeps something in the folder is said in one line; a refusal is one line too.

    take_folder        the run's lock; then the temporaries of writes that a kill -9 or a crash cut short
                       (``.latest-00000400.pt.tmp<pid>``, ``.config.json.tmp<pid>``) are removed when their writer,
                       the pid in the name, no longer runs on this host; a live writer's are left alone
    record_config      config.json written, or checked against the command. It is replaced, with a line, when
                       only keys of ``FREE_ON_RESUME`` changed (config.json records the new value, see
                       ``alphaflow.train.resume``), or when a trainer started in the folder before and it trained
                       nothing (``trained_nothing``: a start that failed before its first checkpoint and metrics
                       row); any other difference is refused and the file kept
    resume_checkpoint  the newest checkpoint that reads and passes its checksum (the others reported, one line
                       each) and agrees with the command's config; with checkpoints and none usable, a refusal
                       naming them (nothing is deleted: starting over would cut metrics.jsonl to step 0)
    resume_metrics     rows past the checkpoint are cut (they are trained again) and a torn last line with them;
                       a damaged line before the last is copied to metrics.damaged.jsonl first, with a line
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Callable

from alphaflow.config import Config, from_dict, to_dict
from alphaflow.run.errors import UsageError, format_bytes
from alphaflow.run.files import keep_damaged_lines, stale_temporaries
from alphaflow.run.folder import FILES, INIT, WANDB_ID, RunFolder
from alphaflow.run.lock import FileLock, process_alive
from alphaflow.train.resume import FREE_ON_RESUME, check_resumed_config, config_changes

__all__ = ["METRICS_DAMAGED", "record_config", "remove_dead_temporaries", "resume_checkpoint", "resume_metrics",
           "take_folder", "trained_nothing"]

METRICS_DAMAGED = "metrics.damaged.jsonl"  # beside metrics.jsonl: the text of its damaged lines, as found
Say = Callable[[str], None]
_FREE_NOTE = "they do not change the run's numbers, so the run resumes and config.json records the new values"


def take_folder(lock: FileLock | None, run: RunFolder, say: Say) -> bool:
    """Acquire ``lock`` (rank 0's; None on the other ranks, which do nothing), then remove the temporaries of
    dead writers (``remove_dead_temporaries``): with the lock held, no trainer of this run can be writing.
    Returns whether a trainer took the folder before (its lock file was there): a start that failed may then
    be restarted (``record_config``'s ``restartable``)."""
    if lock is None:
        return False
    tried = lock.path.exists()
    lock.acquire()
    remove_dead_temporaries(run, say)
    return tried


def remove_dead_temporaries(run: RunFolder, say: Say) -> list[Path]:
    """Remove the temporaries in ``run``'s checkpoints/ and samples/ and beside its files (``FILES``, init.json,
    the wandb id) whose writer (the pid in the name) does not run on this host; one line through ``say`` if any.
    Returns their paths."""
    removed: list[Path] = []
    size = 0
    found = (stale_temporaries(run.checkpoint_dir) + stale_temporaries(run.samples_dir, every=True)
             + stale_temporaries(run.root, (*FILES, INIT, WANDB_ID)))
    for path, pid in found:
        if process_alive(pid):
            continue
        with contextlib.suppress(OSError):  # gone meanwhile, or a read-only folder: left as it is
            nbytes = path.stat().st_size
            path.unlink()
            removed.append(path)
            size += nbytes
    if removed:
        names = ", ".join(p.name for p in removed[:4]) + (" …" if len(removed) > 4 else "")
        say(f"removed {len(removed)} temporary file{'s' if len(removed) > 1 else ''} of writes cut short in "
            f"{run.root} ({names}; {format_bytes(size)}): their writers are no longer running")
    return removed


def trained_nothing(run: RunFolder) -> bool:
    """Whether ``run`` holds nothing that training produces: no checkpoint, no DONE, no sample grid, and no line
    in metrics.jsonl, metrics.damaged.jsonl, eval.jsonl or probes.jsonl."""
    def empty(path: Path) -> bool:
        try:
            return not path.read_bytes().strip()
        except FileNotFoundError:
            return True

    logs = (run.metrics_path, run.root / METRICS_DAMAGED, run.eval_path, run.probes_path)
    return (not run.checkpoints() and not run.is_done() and all(empty(p) for p in logs)
            and not (run.samples_dir.is_dir() and any(run.samples_dir.iterdir())))


def record_config(run: RunFolder, cfg: Config, say: Say, *, unless_checkpointed: bool,
                  restartable: bool = False) -> None:
    """Write config.json, or check the command's config against it (``RunFolder.write_config``, with the rules of
    the module docstring; another config replaces the stored one in a folder that trained nothing only when
    ``restartable``: a trainer started there before, so config.json is that failed start's, not one a sweep
    prepared or a person wrote). With ``unless_checkpointed``, a missing config.json in a folder with checkpoints
    waits until ``resume_checkpoint`` has compared the config with the newest checkpoint's: the record is not
    rewritten with a config the run was not trained with."""
    if unless_checkpointed and run.read_config() is None and run.checkpoints():
        return
    current = to_dict(cfg)

    def accept(stored: dict[str, Any], keys: list[str]) -> bool:
        if not set(keys) - FREE_ON_RESUME:
            say(f"{run.config_path}: changed keys (config.json → now): {'; '.join(config_changes(stored, current))}; "
                f"{_FREE_NOTE}")
            return True
        if restartable and trained_nothing(run):
            say(f"{run.config_path} held another config (differing keys: {', '.join(keys[:10])}) from a start that "
                "trained nothing (no checkpoint, no metrics row); starting over with this command's config")
            return True
        return False

    run.write_config(current, normalize=_today, accept=accept)


def _today(stored: Any) -> dict[str, Any]:
    """A stored config in today's form: fields added since take their defaults, an earlier layout is upgraded."""
    return to_dict(from_dict(stored))


def resume_checkpoint(run: RunFolder, cfg: Config, say: Say) -> tuple[dict[str, Any], Path] | None:
    """(state, path) of the newest checkpoint of ``run`` that reads, passes its checksums and was trained with
    ``cfg`` (free keys aside: said in one line when config.json, which says them otherwise, is missing); None for
    a folder without checkpoints. Raises ``UsageError`` when checkpoints exist and none can be read, or when the
    newest readable one was trained with another config (``check_resumed_config``)."""
    resumed = run.load_checkpoint(map_location="cpu", report=say)
    if resumed is None:
        found = [path.name for _, path in run.checkpoints()]
        if found:
            raise UsageError(f"no checkpoint in {run.checkpoint_dir} can be resumed from ({', '.join(found[:6])}"
                             f"{' …' if len(found) > 6 else ''}: each is unreadable, see above); nothing was changed "
                             "or deleted. Restore one from a copy, or move them away to start the run over")
        return None
    ckpt, path = resumed
    missing = not run.config_path.exists()
    free = check_resumed_config(ckpt.get("config"), to_dict(cfg), path, normalize=_today)
    if free and missing:
        say(f"{path}: changed keys (checkpoint → now): {'; '.join(free)}; {_FREE_NOTE}")
    return ckpt, path


def resume_metrics(run: RunFolder, step: int, say: Say) -> int:
    """Put metrics.jsonl in order for a run resuming at ``step`` (module docstring); returns how many lines left
    it (rows past ``step``, damaged lines, a torn last line)."""
    moved = keep_damaged_lines(run.metrics_path, run.root / METRICS_DAMAGED)
    if moved:
        lines, many = ", ".join(map(str, moved[:10])) + (" …" if len(moved) > 10 else ""), len(moved) > 1
        say(f"warning: {run.metrics_path} is damaged at line{'s' if many else ''} {lines} (not a metrics row); the "
            f"text is kept in {METRICS_DAMAGED} and the run resumes without {'them' if many else 'it'}")
    return run.truncate_metrics(step)
