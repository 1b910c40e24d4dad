"""Per-epoch TensorBoard scalars, written only when the `tensorboard` package is installed.

The events are written here, in the training process, not by TensorBoard's `FileWriter`:
that writer hands every event to a thread of its own, which computes the file's two
CRC-32C checksums per record in pure Python (about 50 µs for an epoch's event) while
holding the interpreter lock, so the training steps of a small run wait for it, and the
hand-over itself costs the step thread about 50 µs an event (docs/benchmarks.md, harness
overhead). An event file is a sequence of TFRecords, each `length (uint64 LE), masked
CRC-32C of the length, the serialized Event proto, masked CRC-32C of the proto`; the
protos are TensorBoard's own, and the checksums come from `google-crc32c` (C) where it is
installed, else from TensorBoard's Python implementation (correct, only slower).
"""
from __future__ import annotations

import contextlib
import importlib.util
import itertools
import logging
import os
import socket
import struct
import time
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator

from bbench.results.files import OutputWriteError

log = logging.getLogger("bbench")

FLUSH_SECONDS = 10
"""The buffered events reach the file when an event is added this long or longer after the
last flush, and on close: an epoch's scalars are visible in TensorBoard at most this long
plus one epoch after it ends."""

FILE_VERSION = "brain.Event:2"
"""The first event of every event file: the format version TensorBoard's readers expect."""

_CRC_MASK_DELTA = 0xA282EAD8
_FILE_NUMBERS = itertools.count()  # the name's last part: two files of one process never clash


def tensorboard_available() -> bool:
    return importlib.util.find_spec("tensorboard") is not None


def _crc32c() -> Callable[[bytes], int]:
    """The CRC-32C (Castagnoli) function: google-crc32c's C one, else TensorBoard's own."""
    try:
        import google_crc32c
    except ImportError:
        from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import crc32c
        return crc32c
    return google_crc32c.value


def masked(crc: int) -> int:
    """TFRecord's masking of a CRC: rotated right by 15 bits, plus a constant (mod 2^32)."""
    return (((crc >> 15) | (crc << 17)) + _CRC_MASK_DELTA) & 0xFFFFFFFF


class EventFile:
    """One TensorBoard event file, written record by record through a buffer that is
    flushed at most every `flush_seconds` (checked when an event is written) and on close.

    A file that cannot be written (no permission, a full disk) raises OutputWriteError,
    naming the file and the switch that runs without it."""

    def __init__(self, log_dir: Path, flush_seconds: float = FLUSH_SECONDS) -> None:
        from tensorboard.compat.proto.event_pb2 import Event

        self._event = Event
        self._crc = _crc32c()
        # TensorBoard's own naming (it finds event files by the prefix); a resumed run adds
        # a file beside the first one's, never over it.
        self.path = log_dir / (f"events.out.tfevents.{int(time.time()):010d}."
                               f"{socket.gethostname()}.{os.getpid()}.{next(_FILE_NUMBERS)}")
        self.flush_seconds = flush_seconds
        self._flushed_at = time.monotonic()
        with self._writing():
            log_dir.mkdir(parents=True, exist_ok=True)
            self._file: BinaryIO = open(self.path, "xb")
            try:
                self._write(Event(wall_time=time.time(), file_version=FILE_VERSION))
                self.flush()
            except OSError:
                self._file.close()
                raise

    def add(self, step: int, **content: Any) -> None:
        """One event at `step`, stamped now, holding `content` (a `summary` Summary proto, or
        a `session_log`)."""
        with self._writing():
            self._write(self._event(wall_time=time.time(), step=step, **content))
            if time.monotonic() - self._flushed_at >= self.flush_seconds:
                self.flush()

    def _write(self, event: Any) -> None:
        data = event.SerializeToString()
        header = struct.pack("<Q", len(data))
        self._file.write(header + struct.pack("<I", masked(self._crc(header))) + data
                         + struct.pack("<I", masked(self._crc(data))))

    def flush(self) -> None:
        self._file.flush()
        self._flushed_at = time.monotonic()

    def close(self) -> None:
        """Write out what is buffered and close; the file is closed even if that write fails."""
        if not self._file.closed:
            with self._writing():
                self._file.close()

    @contextlib.contextmanager
    def _writing(self) -> Iterator[None]:
        """The file's OSError as an OutputWriteError that names it."""
        try:
            yield
        except OSError as err:
            raise OutputWriteError(
                f"could not write the TensorBoard events {self.path}: "
                f"{err.strerror or err}; --set train.tensorboard=false runs without them") from None


class TensorBoardLogger:
    """A Trainer callback: every numeric entry of the epoch record becomes a scalar.

    Method logs appear as `method/<key>` (e.g. `method/coef_audio`), everything else under
    its record name (`train_loss`, `val_acc`, `val_acc_<m>`, `lr`). An epoch's scalars go
    out as one event holding one summary of all of them (TensorBoard reads each value as its
    own scalar series): `SummaryWriter.add_scalar` builds an event per value, each of which
    costs a small run's epoch more than its steps' own bookkeeping.
    """

    def __init__(self, log_dir: Path, resumed_at: int | None = None) -> None:
        """`resumed_at`: the epoch a resumed run continues from. The epochs from it on were
        logged already if the run stopped after them but before its next checkpoint, and are
        trained and logged again: a SessionLog START at that step makes TensorBoard drop the
        earlier file's events from it on, so every epoch shows once."""
        from tensorboard.compat.proto.event_pb2 import SessionLog
        from tensorboard.compat.proto.summary_pb2 import Summary

        self._summary = Summary
        self.events = EventFile(log_dir)
        if resumed_at is not None:
            self.events.add(resumed_at, session_log=SessionLog(status=SessionLog.START))

    def __call__(self, trainer: Any, epoch: int, record: dict[str, Any]) -> None:
        value = self._summary.Value
        values = [value(tag=f"method/{name}", simple_value=v)
                  for name, v in record.get("method", {}).items()]
        values += [value(tag=key, simple_value=v) for key, v in record.items()
                   if isinstance(v, (int, float)) and key != "epoch"]
        self.events.add(epoch, summary=self._summary(value=values))

    def close(self) -> None:
        """The scalars are a view of the run, not its results: a failure to write the last of
        them is a warning, so that it never hides the run's own error or stops its record."""
        try:
            self.events.close()
        except OutputWriteError as err:
            log.warning("%s", err)
