"""bbench's TensorBoard event files (engine/tensorboard.py): records TensorBoard's own reader
accepts (it checks both checksums of every record), the masking of TFRecord's CRC-32C, the
flush interval, and one file per logger, never one over another."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

pytest.importorskip("tensorboard")

from tensorboard.compat.proto.summary_pb2 import Summary  # noqa: E402
from tensorboard.compat.tensorflow_stub import pywrap_tensorflow  # noqa: E402
from tensorboard.compat.tensorflow_stub.errors import DataLossError  # noqa: E402
from tensorboard.compat.proto.event_pb2 import Event  # noqa: E402

from bbench.engine.tensorboard import FILE_VERSION, EventFile, TensorBoardLogger, _crc32c, masked  # noqa: E402
from bbench.results.files import OutputWriteError  # noqa: E402


def read_events(path) -> list[Event]:
    """Every event of a file, through TensorBoard's record reader (checksums verified)."""
    reader = pywrap_tensorflow.PyRecordReader_New(str(path))
    events = []
    while True:
        try:
            reader.GetNext()
        except pywrap_tensorflow.errors.OutOfRangeError:
            return events
        events.append(Event.FromString(reader.record()))


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=2048))
def test_the_masked_checksum_is_tensorboards(data):
    assert masked(_crc32c()(data)) == pywrap_tensorflow.masked_crc32c(data)


def test_without_google_crc32c_tensorboards_own_checksum_is_used(monkeypatch):
    monkeypatch.setitem(sys.modules, "google_crc32c", None)  # its import then fails
    assert _crc32c() is pywrap_tensorflow.crc32c


def test_tensorboards_reader_reads_back_every_scalar_after_the_file_version(tmp_path):
    logger = TensorBoardLogger(tmp_path)
    records = [{"epoch": e, "train_loss": 1.0 / (e + 1), "val_acc": 0.25 * e, "steps": 3,
                "method": {"coef_a": 0.5 + e}} for e in range(3)]
    for e, record in enumerate(records):
        logger(None, e, record)
    logger.close()
    events = read_events(logger.events.path)
    assert events[0].file_version == FILE_VERSION
    assert [e.step for e in events[1:]] == [0, 1, 2]
    for event, record in zip(events[1:], records):
        values = {v.tag: v.simple_value for v in event.summary.value}
        assert values == pytest.approx({"train_loss": record["train_loss"],
                                        "val_acc": record["val_acc"], "steps": 3,
                                        "method/coef_a": record["method"]["coef_a"]})


def test_a_damaged_record_is_refused_by_tensorboards_reader(tmp_path):
    """The checksums are the ones the reader verifies: one flipped byte is detected."""
    events = EventFile(tmp_path)
    events.add(0, summary=Summary(value=[Summary.Value(tag="val_acc", simple_value=0.5)]))
    events.close()
    data = bytearray(events.path.read_bytes())
    data[-6] ^= 0xFF  # inside the last event's proto
    events.path.write_bytes(bytes(data))
    with pytest.raises(DataLossError):
        read_events(events.path)


def test_events_reach_the_file_at_the_flush_interval_and_on_close(tmp_path):
    summary = Summary(value=[Summary.Value(tag="val_acc", simple_value=0.5)])
    held = EventFile(tmp_path / "held", flush_seconds=3600)
    header = held.path.stat().st_size  # the file version, flushed when the file opens
    held.add(0, summary=summary)
    assert held.path.stat().st_size == header  # buffered until the interval has passed
    held.close()
    assert len(read_events(held.path)) == 2
    every = EventFile(tmp_path / "every", flush_seconds=0)
    every.add(0, summary=summary)
    assert len(read_events(every.path)) == 2  # written out at once, the file still open
    every.close()


def test_two_loggers_of_one_directory_write_two_files(tmp_path):
    first, second = EventFile(tmp_path), EventFile(tmp_path)  # the same second and process
    first.close(), second.close()
    assert first.path != second.path
    assert sorted(tmp_path.iterdir()) == sorted([first.path, second.path])


def test_a_directory_that_cannot_hold_the_file_is_named_with_the_switch_that_runs_without_it(tmp_path):
    taken = tmp_path / "tensorboard"
    taken.write_text("a file where the directory should be")
    with pytest.raises(OutputWriteError, match=r"TensorBoard events .*train\.tensorboard=false"):
        EventFile(taken)


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs Linux's /dev/full")
def test_a_full_disk_fails_the_write_by_name_and_the_loggers_close_only_warns(tmp_path, caplog):
    summary = Summary(value=[Summary.Value(tag="val_acc", simple_value=0.5)])
    every = EventFile(tmp_path / "every", flush_seconds=0)
    every._file.close()
    every._file = open("/dev/full", "wb")  # every write fails: No space left on device
    with pytest.raises(OutputWriteError, match="No space left"):
        every.add(0, summary=summary)
    with pytest.raises(OutputWriteError):
        every.close()  # the buffered event cannot be written either
    assert every._file.closed  # closed all the same

    logger = TensorBoardLogger(tmp_path / "held")
    logger.events._file.close()
    logger.events._file = open("/dev/full", "wb")
    logger(None, 0, {"epoch": 0, "val_acc": 0.5})  # buffered: nothing fails yet
    with caplog.at_level("WARNING", logger="bbench"):
        logger.close()  # the last scalars are lost, the run's own outcome is not
    assert logger.events._file.closed
    assert "No space left" in caplog.text
