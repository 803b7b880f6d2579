"""Checkpoints written in the background: rank 0 snapshots the state, a thread writes it, training goes on.

Why: a synchronous checkpoint stalls every rank while rank 0 writes it (2.1 GB for DiT-B/2, 10.8 GB for
XL/2, every ``train.ckpt_every`` steps). Here the training thread pays only for a host copy of the state.

What is copied (``snapshot``): every tensor of the state tree, storage by storage, so views keep sharing
their copy and the file is the one ``torch.save`` would write of the live state. CUDA storages go into
pinned host memory (``PinnedArena``) that the next save refills; CPU storages are cloned. Dicts, lists and
tuples are rebuilt, other leaves deep-copied: nothing the training thread mutates later (weights and Adam's
moments in place, the loop's counters) is shared with the writer.

Ordering guarantees:
- ``save`` returns with the snapshot taken: on the CPU copied; on CUDA its copies are queued on the device's
  current stream, behind the kernels that made the state and ahead of any that change it later, and the
  writer waits on an event recorded after them before it reads the host copy.
- At most one write is in flight: ``save`` first waits for the previous one (whose buffers it reuses), so
  checkpoints reach the disk in step order, each through ``RunFolder.save_checkpoint`` (temporary name,
  fsync, rename, then rotation of the rolling ones; the checksums of the tensors are computed there too, on the
  writer thread). A crash or kill -9 mid-write leaves the older checkpoints and a temporary file that no reader
  takes for a checkpoint (the next trainer to take the run's lock removes it: ``alphaflow.train.startup``).
- A failed write raises on the training thread the exception the synchronous path raises (``WriteFailed``
  and its one-line message) at the next ``poll``, ``save``, ``wait`` or ``close``; ``failed`` tells without
  raising. ``wait`` returns once the file has its final name: the trainer calls it before a run stops or is
  marked DONE, and ``close`` on every way out.
"""

from __future__ import annotations

import copy
import threading
import traceback
from typing import Any

import torch

from alphaflow.run.folder import RunFolder

__all__ = ["AsyncCheckpointer", "PinnedArena", "snapshot"]


class PinnedArena:
    """Pinned host memory for the copies of device storages, kept across saves. Storages are packed, in the
    order a snapshot meets them, into chunks of ``CHUNK`` bytes (torch's pinned allocator rounds each
    allocation up to a power of two: one buffer per tensor would pin up to twice the state), so the same
    model fills the same places at every save and only the first one allocates."""

    CHUNK = 1 << 28  # 256 MiB; a larger storage gets a chunk of its own size
    ALIGN = 64

    def __init__(self, *, pin: bool = True) -> None:
        self.pin = pin
        self.chunks: list[torch.UntypedStorage] = []
        self.devices: set[torch.device] = set()  # where this save's copies were queued
        self._index = self._offset = 0

    def stages(self, storage: torch.UntypedStorage) -> bool:
        """Whether ``storage`` is copied into the arena (else cloned on the host)."""
        return storage.device.type == "cuda"

    def reset(self) -> None:
        self._index = self._offset = 0
        self.devices = set()

    def take(self, nbytes: int) -> torch.UntypedStorage:
        """The next ``nbytes`` of the arena, a storage of its own over them (free until the next ``reset``)."""
        while True:
            if self._index == len(self.chunks):
                self.chunks.append(self._alloc(nbytes))
            chunk = self.chunks[self._index]
            if self._offset + nbytes <= chunk.nbytes():
                out: torch.UntypedStorage = chunk[self._offset:self._offset + nbytes]
                self._offset += -(-nbytes // self.ALIGN) * self.ALIGN
                return out
            if self._offset == 0:  # too small even empty: a chunk for this size instead
                self.chunks[self._index] = self._alloc(nbytes)
            else:
                self._index, self._offset = self._index + 1, 0

    def _alloc(self, nbytes: int) -> torch.UntypedStorage:
        return torch.empty(max(self.CHUNK, nbytes), dtype=torch.uint8, pin_memory=self.pin).untyped_storage()


def snapshot(tree: Any, arena: PinnedArena | None = None) -> Any:
    """A copy of ``tree`` on the host that shares no storage or container with it (see the module docstring).
    Device storages go into ``arena`` (reset here; a fresh one if None) with their copies only queued: wait
    on ``arena.devices``' current streams before reading them. Host storages are cloned."""
    arena = arena if arena is not None else PinnedArena()
    arena.reset()
    copies: dict[tuple[str, int, int], torch.UntypedStorage] = {}  # one copy per storage: views stay views

    def storage_copy(st: torch.UntypedStorage) -> torch.UntypedStorage:
        key = (str(st.device), st.data_ptr(), st.nbytes())
        if st.nbytes() and key in copies:
            return copies[key]
        if arena.stages(st):
            out = arena.take(st.nbytes())
            out.copy_(st, non_blocking=True)
            if st.device.type == "cuda":
                arena.devices.add(st.device)
        else:
            out = st.clone() if st.device.type == "cpu" else st.cpu()
        copies[key] = out
        return out

    def walk(obj: Any) -> Any:
        if isinstance(obj, torch.Tensor):
            host = torch.empty(0, dtype=obj.dtype)
            return host.set_(storage_copy(obj.untyped_storage()), obj.storage_offset(), obj.size(), obj.stride())
        if isinstance(obj, dict):
            out = copy.copy(obj)  # keeps the type and attributes (a state dict's ``_metadata``)
            for key, value in obj.items():
                out[key] = walk(value)
            return out
        if isinstance(obj, list):
            return [walk(v) for v in obj]
        if type(obj) is tuple:
            return tuple(walk(v) for v in obj)
        if obj is None or isinstance(obj, (bool, int, float, str, bytes)):
            return obj
        return copy.deepcopy(obj)

    return walk(tree)


class AsyncCheckpointer:
    """Rank 0's checkpoint writer for one run folder: ``save`` snapshots and hands the write to one background
    thread (``asynchronous=False``: writes before it returns, as before ``train.async_ckpt``)."""

    def __init__(self, run: RunFolder, *, asynchronous: bool = True, arena: PinnedArena | None = None) -> None:
        self.run, self.asynchronous = run, asynchronous
        self.arena = arena if arena is not None else PinnedArena()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def save(self, state: dict[str, Any], step: int, *, keep: bool = False) -> None:
        """Checkpoint ``state`` as step ``step`` (a permanent copy too if ``keep``); first waits for the write in
        flight and raises its error, if it had one (then this state is not written)."""
        self.wait()
        if not self.asynchronous:
            self.run.save_checkpoint(state, step, keep=keep)
            return
        host = snapshot(state, self.arena)
        ready: list[torch.cuda.Event] = []
        for device in self.arena.devices:  # an event after the queued copies, on the stream that runs them
            ready.append(torch.cuda.Event())
            ready[-1].record(torch.cuda.current_stream(device))
        self._thread = threading.Thread(target=self._write, args=(host, step, keep, ready),
                                        name=f"checkpoint-{step:08d}")
        self._thread.start()

    def _write(self, host: dict[str, Any], step: int, keep: bool, ready: list[torch.cuda.Event]) -> None:
        try:
            for event in ready:
                event.synchronize()
            self.run.save_checkpoint(host, step, keep=keep)
        except BaseException as exc:  # raised on the training thread by the next poll, save, wait or close
            link: BaseException | None = exc
            while link is not None:  # the failed frames' locals would hold the snapshot as long as the error
                traceback.clear_frames(link.__traceback__)
                link = link.__cause__ or link.__context__
            self._error = exc
        del host

    @property
    def in_flight(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def failed(self) -> bool:
        """Whether a finished write failed and its error is not yet raised; never blocks."""
        return not self.in_flight and self._error is not None

    def poll(self) -> None:
        """Raise the error of a finished write, if any; never blocks (called every step)."""
        if not self.in_flight:
            self._raise()

    def wait(self) -> None:
        """Block until the write in flight has its final name; raise its error, if it had one."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self._raise()

    def close(self, *, raise_error: bool = True) -> BaseException | None:
        """Wait for the write in flight and drop the pinned buffers. Its error is raised, or with
        ``raise_error=False`` (a way out on which another exception is on its way) returned."""
        try:
            self.wait()
        except BaseException as exc:
            if raise_error:
                raise
            return exc
        finally:
            self.arena.chunks.clear()
        return None

    def _raise(self) -> None:
        error, self._error = self._error, None
        if error is not None:
            raise error
