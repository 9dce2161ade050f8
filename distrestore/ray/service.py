"""The restore service's coordinator: a named, asynchronous Ray actor around ``Coordinator``.

It opens checkpoint indexes (each read from storage once, its raw bytes shared with workers
through the object store), takes registrations, submits the read tasks its ``Coordinator``
decides on, awaits their small reports, and answers each registration with object references.
It never touches tensor bytes. Every decision is in ``distrestore.coordination``; this module
only carries messages between it and Ray. How it all fits: ``docs/service.md``.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import NamedTuple

import ray

from ..coordination.files import CheckpointInfo
from ..coordination.state import Answer, Coordinator, Evicted, Failure, Planned, Registration
from ..coordination.wire import unpack
from ..errors import (
    CheckpointNotFoundError,
    DistRestoreError,
    ReadWorkerLostError,
    ServiceTimeoutError,
    StorageError,
)
from ..index import CheckpointIndex, open_checkpoint, resolve_prefix
from ..storage import Storage
from .reads import submit_read, submit_slice

BY_VALUE_BYTES = 64 << 10  # pieces this small are handed over as bytes, not object references
_FORGET_SECONDS = 300.0  # a registration done that nobody asked about is forgotten after this


class Opened(NamedTuple):
    """A checkpoint the service serves, as a worker needs it: its file ids and its index."""

    id: int
    prefix: str
    first_file: int
    num_files: int
    storage: Storage
    index_bytes: object  # ObjectRef of the raw ``.index`` file
    file_sizes: dict  # shard id -> data file size: workers check entries against them, asking nothing


class Reply(NamedTuple):
    """Objects handed to a registration: ``refs[i]`` holds (or will hold: its read may still be
    under way) bytes ``[starts[i], ends[i])`` (positions, plain ints); it is an object reference,
    or, for a small piece already read, the bytes themselves (a uint8 array). ``done``: every byte it
    needs is read and checked, and every object handed over; otherwise ``poll([token])`` hands
    over more as their reads start, and says when it is done (or fails). Nothing may be used
    before."""

    starts: list
    ends: list
    refs: list
    token: int
    done: bool


class ServiceOptions(NamedTuple):
    checkpoints: tuple[str, ...]  # opened first: the first is the default
    name: str
    namespace: str | None
    storage_options: dict | None
    cache_bytes: int
    chunk_bytes: int
    min_piece_bytes: int
    reads_per_node: int
    read_retries: int
    read_cpus: float


class _Slot:
    """A registration from its arrival until its worker heard the end of it: its deliveries
    once planned (``unsent``: those whose objects cannot be handed over yet; ``ready``: objects
    to hand over, as ``(object, start, end)``), whether every byte is read and checked
    (``finished``) or what failed it (``error``), and the polls waiting for news of it
    (``watchers``). Small pieces are handed over as bytes, the rest as object references."""

    __slots__ = ("reg", "timeout", "rid", "clock", "planned", "unsent", "ready", "finished", "error")
    __slots__ += ("watchers",)

    def __init__(self, reg: Registration | None, timeout: float):
        self.reg, self.timeout, self.rid = reg, timeout, -1
        self.clock = None
        self.planned = self.finished = False
        self.error: BaseException | None = None
        self.unsent: list = []
        self.ready: list = []
        self.watchers: list[asyncio.Future] = []

    @property
    def settled(self) -> bool:
        return self.finished or self.error is not None

    def poke(self) -> None:
        """Wake the polls waiting for news of it."""
        for fut in self.watchers:
            if not fut.done():
                fut.set_result(None)
        self.watchers.clear()


def read_index(path: str, storage: Storage) -> tuple[str, bytes]:
    """(prefix, raw index bytes) of a checkpoint path, resolved like ``open_checkpoint``."""
    if storage.local:
        path = os.path.abspath(path)  # workers run elsewhere, in other directories
    if not storage.local:
        try:  # a prefix is the common case: its index in one GET
            return path, storage.read(path + ".index")
        except CheckpointNotFoundError:
            pass
    prefix = resolve_prefix(path, storage)
    try:
        return prefix, storage.read(prefix + ".index")
    except CheckpointNotFoundError:
        open_checkpoint(path, storage=storage)  # raises the error a local open would
        raise


def _file_sizes(index: CheckpointIndex) -> dict[int, int]:
    return {i: index.data_file_size(i) for i in range(len(index.data_files()))}


def _storage_key(storage: Storage) -> tuple:
    return storage.protocol, repr(sorted(storage.storage_options.items()))


class RestoreService:
    """The coordinator actor (made with ``ray.remote`` by ``client.serve``)."""

    def __init__(self, options: ServiceOptions):
        self.options = options
        self.state = Coordinator(
            cache_bytes=options.cache_bytes,
            chunk_bytes=options.chunk_bytes,
            min_piece_bytes=options.min_piece_bytes,
            reads_per_node=options.reads_per_node,
            small_piece_bytes=BY_VALUE_BYTES,
        )
        self.opened: dict[tuple, asyncio.Future] = {}  # (path, storage key) -> Future[Opened]
        self.storages: dict[int, Storage] = {}  # checkpoint id -> its storage
        self.pieces: dict[int, object] = {}  # piece id -> ObjectRef of its bytes
        self.small: set[int] = set()  # pieces handed over by value once read (see BY_VALUE_BYTES)
        self.values: dict[int, object] = {}  # small piece id -> its bytes, once read
        self.slots: dict[int, _Slot] = {}  # registration id -> its slot, until its worker heard the end
        self.arriving: list[_Slot] = []  # registrations not yet handed to the coordinator
        self.batch: asyncio.Future | None = None  # set once ``arriving`` is planned
        self.calls = dict.fromkeys(("register_many", "poll", "read_tasks"), 0)
        self.unheard: dict[int, float] = {}  # settled registrations whose worker has not heard: when
        self.default: Opened | None = None

    # -- checkpoints --------------------------------------------------------------------------

    async def open(self, path: str | None = None, storage_options: dict | None = None) -> Opened:
        """The checkpoint at ``path`` (None: the first one served), opened once."""
        if path is None and self.default is None and self.options.checkpoints:
            return await self.open(self.options.checkpoints[0])  # serve() may be opening it now
        if path is None:
            if self.default is None:
                raise CheckpointNotFoundError(
                    f"the restore service {self.options.name!r} serves no checkpoint yet: name one"
                )
            return self.default
        options = self.options.storage_options if storage_options is None else storage_options
        storage = Storage.for_url(path, options)
        key = (os.path.abspath(path) if storage.local else path, _storage_key(storage))
        fut = self.opened.get(key)
        if fut is None:
            fut = self.opened[key] = asyncio.get_running_loop().create_future()
            try:
                prefix, data = await asyncio.to_thread(read_index, path, storage)
                same = self.opened.get((prefix, key[1]))
                if same is not None and same is not fut:
                    result = await same  # a directory and its latest prefix share one checkpoint
                else:
                    self.opened[(prefix, key[1])] = fut
                    index = await asyncio.to_thread(CheckpointIndex.from_bytes, prefix, data, storage)
                    sizes = await asyncio.to_thread(_file_sizes, index)
                    info: CheckpointInfo = self.state.add_checkpoint(prefix, index)
                    self.storages[info.id] = storage
                    result = Opened(*info, storage, ray.put(data), sizes)
                fut.set_result(result)
            except BaseException as e:
                fut.set_exception(e)
                for k in [k for k, f in self.opened.items() if f is fut]:
                    del self.opened[k]  # a later call tries again
        result = await asyncio.shield(fut)
        if self.default is None:
            self.default = result
        return result

    # -- registrations ------------------------------------------------------------------------

    async def register_many(self, wires: list[tuple], wait: float = 0.25) -> list[tuple[int, object]]:
        """Registrations that travelled together (``coordination.wire.pack`` forms, one worker
        process's concurrent calls): for each, ``(token, news)``. News is a ``Reply`` (objects
        whose reads started, small pieces' bytes once read; ``done`` when that is all), the
        error that failed it, or None: ``poll`` follows those. Answers once each has news, but
        for members of groups still gathering, or after ``wait`` seconds: a small registration
        of bytes not read yet is answered in one call, done. Registrations arriving together
        from several calls are planned as one batch."""
        self.calls["register_many"] += 1
        slots = await self._register(wires)
        out = [(slot.rid, self._news(slot)) for slot in slots]
        waiting = [i for i, (_, news) in enumerate(out) if news is None and self._worth_waiting(slots[i])]
        if waiting and wait > 0:
            got = dict(await self._wait_news([slots[i].rid for i in waiting], wait, first=False))
            out = [(rid, got.get(rid, news)) for rid, news in out]
        return out

    @staticmethod
    def _worth_waiting(slot: _Slot) -> bool:
        return slot.rid >= 0 and (slot.planned or slot.reg.group is None)

    async def _register(self, wires: list[tuple]) -> list[_Slot]:
        loop = asyncio.get_running_loop()
        slots = []
        for wire in wires:
            try:
                reg, timeout = unpack(wire)
            except (TypeError, ValueError) as e:
                slot = _Slot(None, 0.0)
                slot.error = ValueError(f"a malformed registration: {e}")
            else:
                slot = self._arrive(reg, timeout, loop)
            slots.append(slot)
        if self.batch is not None:
            await asyncio.shield(self.batch)
        return slots

    async def poll(self, tokens: list[int], wait: float = 10.0) -> list[tuple[int, object]]:
        """News of registrations ``tokens`` (as ``register_many``'s), for those that have some;
        waits until one has, or ``wait`` seconds (then answers an empty list)."""
        self.calls["poll"] += 1
        return await self._wait_news(tokens, wait, first=True)

    async def _wait_news(self, tokens: list[int], wait: float, first: bool) -> list[tuple[int, object]]:
        """``(token, news)`` of the tokens with news once one has some (``first``) or all have,
        or after ``wait`` seconds with what there is."""
        loop = asyncio.get_running_loop()
        stop = loop.time() + wait
        out = []
        while True:
            left = []
            for token in tokens:
                slot = self.slots.get(token)
                news = self._forgotten(token) if slot is None else self._news(slot)
                if news is not None:
                    out.append((token, news))
                else:
                    left.append(token)
            tokens = left
            remaining = stop - loop.time()
            if not tokens or (out and first) or remaining <= 0:
                return out
            fut = loop.create_future()
            for token in tokens:
                self.slots[token].watchers.append(fut)
            try:
                await asyncio.wait_for(fut, remaining)
            except asyncio.TimeoutError:
                pass

    def _arrive(self, reg: Registration, timeout: float, loop: asyncio.AbstractEventLoop) -> _Slot:
        slot = _Slot(reg, timeout)
        self.arriving.append(slot)
        if self.batch is None:
            self.batch = loop.create_future()
            loop.call_soon(self._plan_arrivals)
        slot.clock = loop.call_later(timeout, self._time_out, slot)
        return slot

    def _news(self, slot: _Slot):
        """What ``slot``'s worker has not heard yet: a ``Reply`` with the objects whose reads
        started since (small pieces: their bytes, once read) and ``done``, its error, or None.
        A slot whose end was told is gone."""
        if slot.error is not None:
            self._forget(slot)
            return slot.error
        if not slot.planned:
            return None
        self._take_ready(slot)
        done = slot.finished and not slot.unsent
        if done:
            self._forget(slot)
        if not (slot.ready or done):
            return None
        objs, starts, ends = zip(*slot.ready) if slot.ready else ((), (), ())
        slot.ready = []
        return Reply(list(starts), list(ends), list(objs), slot.rid, done)

    def _take_ready(self, slot: _Slot) -> None:
        """Move the deliveries whose objects exist from ``unsent`` to ``ready``: pieces being read
        or read (a slice made where the piece lives, when sliced), small pieces once read."""
        unsent = []
        for d in slot.unsent:
            if d.piece in self.small:
                value = self.values.get(d.piece)
                if value is None:  # being read: its bytes go with the answer
                    unsent.append(d)
                    continue
                obj = value[d.offset : d.offset + d.end - d.start]
            else:
                obj = self.pieces.get(d.piece)
                if obj is None:
                    unsent.append(d)
                    continue
                if d.sliced:
                    obj = submit_slice(obj, d.offset, d.end - d.start, retries=self.options.read_retries)
            slot.ready.append((obj, d.start, d.end))
        slot.unsent = unsent

    def _forget(self, slot: _Slot) -> None:
        if self.slots.get(slot.rid) is slot:
            del self.slots[slot.rid]
        self.unheard.pop(slot.rid, None)

    def _forgotten(self, token: int) -> ServiceTimeoutError:
        return ServiceTimeoutError(f"the restore service {self.options.name!r} no longer knows registration {token}")

    def _settle(self, slot: _Slot) -> None:
        if slot.clock is not None:
            slot.clock.cancel()
        slot.poke()
        # a worker that died before it heard the end: forget it after a while (oldest first:
        # the dict keeps the order they settled in)
        now = time.monotonic()
        self.unheard[slot.rid] = now
        while self.unheard:
            rid, at = next(iter(self.unheard.items()))
            if now - at < _FORGET_SECONDS:
                break
            del self.unheard[rid]
            self.slots.pop(rid, None)

    def _time_out(self, slot: _Slot) -> None:
        what = f"group {slot.reg.group!r}" if slot.reg.group else "a registration"
        err = ServiceTimeoutError(f"{what} of service {self.options.name!r} not answered in {slot.timeout:g} s")
        if slot.rid < 0:  # not yet handed to the coordinator
            self.arriving.remove(slot)
            slot.error = err
            return
        self._handle(self.state.withdraw(slot.rid, err))

    def _plan_arrivals(self) -> None:
        slots, self.arriving = self.arriving, []
        batch, self.batch = self.batch, None
        try:
            gathering = {s.reg.group for s in slots if s.reg.group is not None} - set(self.state.groups)
            rids, events = self.state.register_many([s.reg for s in slots])
            for slot, rid in zip(slots, rids):
                slot.rid = rid
                self.slots[rid] = slot
            loop = asyncio.get_running_loop()
            for name in gathering & set(self.state.groups):  # a new group: its first member sets its clock
                timeout = min(s.timeout for s in slots if s.reg.group == name)
                loop.call_later(timeout, self._expire_group, name, self.state.group_generation(name))
            self._pump()  # first: the reads of this batch start, so their objects go with the answers
            self._handle(events)
        except Exception as e:  # a fault of the coordinator's own: its registrations fail, not wait
            for slot in slots:
                if not slot.settled:
                    slot.error = e
                    slot.poke()
        finally:
            batch.set_result(None)

    def _expire_group(self, name: str, generation: int) -> None:
        self._handle(self.state.expire_group(name, generation))

    def _handle(self, events: list) -> None:
        for ev in events:
            if isinstance(ev, Evicted):
                for pid in ev.pieces:
                    self._drop(pid)  # workers still holding it keep it alive
                continue
            slot = self.slots.get(ev.reg)
            if slot is None or slot.settled:
                continue
            if isinstance(ev, Planned):
                slot.planned, slot.unsent = True, ev.deliveries
                slot.poke()
            elif isinstance(ev, Answer):
                slot.finished = True
                self._take_ready(slot)  # now: the events after this one may evict its pieces
                self._settle(slot)
            elif isinstance(ev, Failure):
                slot.error = ev.error
                self._settle(slot)

    # -- reads --------------------------------------------------------------------------------

    def _pump(self) -> None:
        for orders in self.state.take_reads():
            self.calls["read_tasks"] += 1
            refs, reports = submit_read(
                self.storages[orders[0].checkpoint],
                orders,
                retries=self.options.read_retries,
                num_cpus=self.options.read_cpus,
                by_value_bytes=BY_VALUE_BYTES,
            )
            self.pieces.update(refs)
            pieces = [o.piece for o in orders]
            self.small.update(p for p in pieces if p not in refs)
            asyncio.ensure_future(self._await_read(pieces, reports))
            for piece in refs:  # registrations waiting for these refs: hand them over now
                for rid in self.state.waiting_for(piece):
                    slot = self.slots.get(rid)
                    if slot is not None and slot.watchers:
                        slot.poke()

    async def _await_read(self, pieces: list[int], reports_ref) -> None:
        try:
            reports, small = await reports_ref
        except (ray.exceptions.RayError, ValueError, TypeError) as e:  # also a malformed answer
            cause = getattr(e, "cause", None) if isinstance(e, ray.exceptions.RayTaskError) else None
            for piece in pieces:
                where = self.state.describe_piece(piece)
                if isinstance(cause, DistRestoreError):
                    err = type(cause)(f"{cause} (the service was reading {where})")
                elif isinstance(e, ray.exceptions.RayTaskError):
                    err = StorageError(f"the service's read of {where} failed: {e}")
                else:  # its worker or node died past the retries
                    err = ReadWorkerLostError(f"the service's read of {where} was lost: {type(e).__name__}: {e}")
                self._drop(piece)
                self._handle(self.state.read_failed(piece, err))
        else:
            for piece, report, value in zip(pieces, reports, small):
                if value is not None and piece in self.small:
                    self.values[piece] = value
                self._handle(self.state.read_done(piece, report))
        self._pump()

    def _drop(self, piece: int) -> None:
        self.pieces.pop(piece, None)
        self.small.discard(piece)
        self.values.pop(piece, None)

    # -- the rest -----------------------------------------------------------------------------

    async def stats(self) -> dict:

        return {
            "name": self.options.name,
            "namespace": self.options.namespace,
            "cpu_seconds": time.process_time(),  # the coordinator's own CPU time, all threads
            "calls": dict(self.calls),  # actor calls taken, by method
            **self.state.stats(),
        }

    async def release(self) -> None:
        self._handle(self.state.release())

    async def ping(self) -> str:
        return ray.get_runtime_context().get_node_id()
