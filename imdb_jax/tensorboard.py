"""TensorBoard logs of trained variants, like Keras' `TensorBoard` callback, without TensorFlow.

`TensorBoardLogger(log_dir, specs)` makes one run folder per variant under `log_dir`, named
from the variant's name (``"16-16 l2=0.001"`` becomes ``16-16_l2=0.001``). Each holds:

- the scalars ``loss``, ``accuracy``, ``val_loss`` and ``val_accuracy``, one point per epoch at
  step = the epoch's number (1, 2, ...); a diverged epoch's NaN is left out, so the curve stops;
- the variant's settings as one HParams session (the ``hparams`` plugin's session start and end
  summaries), so TensorBoard's HParams view tabulates every run against its last metrics.

No experiment summary is written: TensorBoard then builds the HParams table from the sessions
it finds, so runs written by separate commands into one `log_dir` compare side by side (an
experiment summary would freeze the table to the first writer's settings).

Event files are TFRecord framed `Event` protocol buffers, built with tensorboardX's generated
protos and CRC (tensorboardX needs only protobuf and NumPy). They are flushed after every
epoch, without an fsync, so a running TensorBoard shows the curves as they grow.

A run folder that already holds event files (an earlier run into the same `log_dir`) is not
reused: the new run gets ``-2``, ``-3``, ... appended, so two runs never mix in one folder. A
resumed run therefore writes a fresh folder holding every epoch.
"""

from __future__ import annotations

import importlib
import itertools
import math
import os
import re
import socket
import struct
import time
import weakref
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from imdb_jax.errors import ImdbJaxError

SCALARS = ("loss", "accuracy", "val_loss", "val_accuracy")
"""History keys written as scalars, under these tags."""

SESSION_START_TAG = "_hparams_/session_start_info"
SESSION_END_TAG = "_hparams_/session_end_info"
HPARAMS_PLUGIN = "hparams"
_STATUS = {"success": "STATUS_SUCCESS", "failure": "STATUS_FAILURE"}
_UNSAFE = re.compile(r"[^A-Za-z0-9._=+-]+")
_files = itertools.count()  # keeps two event files a process opens in one folder apart


def _proto(name: str) -> Any:
    """A tensorboardX generated protobuf module (typed Any: its classes are built at import)."""
    return importlib.import_module(f"tensorboardX.proto.{name}")


def run_folder_name(name: str) -> str:
    """`name` made safe as one path component: runs of other characters than letters, digits
    and ``._=+-`` become one ``_`` (``"16-16 l2=0.001 #2"`` -> ``"16-16_l2=0.001_2"``)."""
    safe = _UNSAFE.sub("_", name).strip("._")
    return safe or "variant"


def _hparam_value(value: Any) -> bool | float | str | None:
    """A setting as the HParams plugin stores it: bool, number (float64) or string; sequences
    such as hidden widths become ``"16-16"``; None is left out."""
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, Sequence):
        return "-".join(str(item) for item in value)
    try:
        return float(value)
    except (TypeError, ValueError):
        return str(value)


def spec_hparams(spec: Any) -> dict[str, Any]:
    """A `VariantSpec`'s settings as hyperparameters: ``hidden_units`` ("16-16"), ``layers``,
    ``dropout_rate``, ``l1``, ``l2``, ``weight_decay``, ``learning_rate`` and ``seed``."""
    settings = spec.to_dict()
    settings.pop("name", None)
    settings["layers"] = len(spec.hidden_units)
    return settings


def _summary_event(value: Any, step: int = 0) -> Any:
    event_pb2 = _proto("event_pb2")
    summary_pb2 = _proto("summary_pb2")

    return event_pb2.Event(wall_time=time.time(), step=step, summary=summary_pb2.Summary(value=[value]))


def _hparams_value(tag: str, **plugin_data: Any) -> Any:
    plugin_hparams_pb2 = _proto("plugin_hparams_pb2")
    summary_pb2 = _proto("summary_pb2")

    content = plugin_hparams_pb2.HParamsPluginData(version=0, **plugin_data).SerializeToString()
    metadata = summary_pb2.SummaryMetadata(
        plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name=HPARAMS_PLUGIN, content=content)
    )
    return summary_pb2.Summary.Value(tag=tag, metadata=metadata)


class _EventFile:
    """One ``events.out.tfevents.*`` file: TFRecord frames (length, its masked CRC-32C, the
    serialised `Event`, its masked CRC-32C)."""

    def __init__(self, folder: Path):
        event_pb2 = _proto("event_pb2")

        name = f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}.{os.getpid()}.{next(_files)}"
        self.path = folder / name
        self._file = open(self.path, "wb")
        self.write(event_pb2.Event(wall_time=time.time(), file_version="brain.Event:2"))

    def write(self, event: Any) -> None:
        # Deferred: tensorboardX (~0.2 s) only to write or read events; --help imports this module.
        from tensorboardX.record_writer import masked_crc32c

        data = event.SerializeToString()
        header = struct.pack("<Q", len(data))
        self._file.write(
            header + struct.pack("<I", masked_crc32c(header)) + data + struct.pack("<I", masked_crc32c(data))
        )

    def flush(self) -> None:
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def _close_all(files: Sequence[_EventFile]) -> None:
    for events in files:
        events.close()


class TensorBoardLogger:
    """Writes variants' histories as TensorBoard runs as they train.

    Its `on_epoch_end(epochs_done, histories)` is the callback `fit_variants(...,
    on_epoch_end=...)` takes; `close()` ends every run's HParams session.

    Args:
      log_dir: the folder of runs (created).
      variants: `VariantSpec`s (their names name the runs, their settings are the
        hyperparameters) or plain run names.
      hparams: settings every run shares (epochs, batch_size, ...), a mapping; or one mapping
        per variant. Either is merged over the specs' own settings.

    Raises:
      ImdbJaxError: `log_dir` cannot be written, or `hparams` does not match `variants`.
    """

    def __init__(
        self,
        log_dir: str | os.PathLike,
        variants: Sequence[Any],
        hparams: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None = None,
    ):
        plugin_hparams_pb2 = _proto("plugin_hparams_pb2")

        variants = list(variants)
        if hparams is None or isinstance(hparams, Mapping):
            per_variant = [dict(hparams or {}) for _ in variants]
        else:
            per_variant = [dict(settings) for settings in hparams]
            if len(per_variant) != len(variants):
                raise ImdbJaxError(f"hparams has {len(per_variant)} entries for {len(variants)} variants")
        self.log_dir = Path(log_dir)
        self.names = [variant if isinstance(variant, str) else variant.name for variant in variants]
        self.hparams = [
            {**({} if isinstance(variant, str) else spec_hparams(variant)), **settings}
            for variant, settings in zip(variants, per_variant)
        ]
        self._written = [0] * len(variants)  # epochs of each history already in its file
        self._files: list[_EventFile] = []
        # A logger dropped unclosed (training raised) still closes its files, flushed.
        weakref.finalize(self, _close_all, self._files)
        self.run_dirs: list[Path] = []
        self.closed = False
        try:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            taken: set[str] = set()
            for name, settings in zip(self.names, self.hparams):
                folder = self._free_folder(run_folder_name(name), taken)
                folder.mkdir(parents=True, exist_ok=True)
                self.run_dirs.append(folder)
                self._files.append(_EventFile(folder))
                start = plugin_hparams_pb2.SessionStartInfo(start_time_secs=time.time())
                for key, value in settings.items():
                    value = _hparam_value(value)
                    if isinstance(value, bool):
                        start.hparams[key].bool_value = value
                    elif isinstance(value, float):
                        start.hparams[key].number_value = value
                    elif isinstance(value, str):
                        start.hparams[key].string_value = value
                self._files[-1].write(_summary_event(_hparams_value(SESSION_START_TAG, session_start_info=start)))
                self._files[-1].flush()
        except OSError as error:
            self._close_files()
            raise ImdbJaxError(f"cannot write TensorBoard logs to {self.log_dir}: {error.strerror or error}") from None

    def _free_folder(self, base: str, taken: set[str]) -> Path:
        """``base``, or ``base-2``, ``base-3``...: not used by this logger, and holding no event
        file of an earlier run."""
        for copy in itertools.count(1):
            name = base if copy == 1 else f"{base}-{copy}"
            folder = self.log_dir / name
            if name not in taken and not any(folder.glob("*tfevents*")):
                taken.add(name)
                return folder
        raise AssertionError("unreachable")

    def on_epoch_end(self, epochs_done: int, histories: Sequence[Mapping[str, Sequence[Any]]]) -> None:
        """Writes every epoch of `histories` not yet written, then flushes.

        Args:
          epochs_done: the epochs finished (unused: each history's length says how many it
            holds, which also lets a caller pass histories of different lengths, or ``{}``
            for a variant not yet trained).
          histories: one Keras-style history per variant, in `variants`' order: lists
            ``"loss"``, ``"accuracy"``, optional ``"val_loss"``, ``"val_accuracy"``, one value
            per epoch.
        """
        del epochs_done
        summary_pb2 = _proto("summary_pb2")

        if self.closed:
            raise ImdbJaxError("this TensorBoardLogger is closed")
        if len(histories) != len(self._files):
            raise ImdbJaxError(f"got {len(histories)} histories for {len(self._files)} variants")
        for index, (history, events) in enumerate(zip(histories, self._files)):
            epochs = len(history.get("loss", ()))
            for epoch in range(self._written[index], epochs):
                for tag in SCALARS:
                    values = history.get(tag)
                    if values is None or epoch >= len(values) or not math.isfinite(values[epoch]):
                        continue
                    events.write(
                        _summary_event(
                            summary_pb2.Summary.Value(tag=tag, simple_value=float(values[epoch])), step=epoch + 1
                        )
                    )
            if epochs > self._written[index]:
                self._written[index] = epochs
                events.flush()

    def close(self, status: str = "success") -> None:
        """Ends every run's HParams session with `status` ("success", or "failure": training
        raised or was interrupted) and closes the files. Idempotent."""
        api_pb2 = _proto("api_pb2")
        plugin_hparams_pb2 = _proto("plugin_hparams_pb2")

        if self.closed:
            return
        self.closed = True
        end = plugin_hparams_pb2.SessionEndInfo(status=api_pb2.Status.Value(_STATUS[status]), end_time_secs=time.time())
        try:
            for events in self._files:
                events.write(_summary_event(_hparams_value(SESSION_END_TAG, session_end_info=end)))
        finally:
            self._close_files()

    def _close_files(self) -> None:
        _close_all(self._files)

    def __enter__(self) -> TensorBoardLogger:
        return self

    def __exit__(self, exc_type: Any, *exc_info: Any) -> None:
        self.close("success" if exc_type is None else "failure")


def read_events(run_dir: str | os.PathLike) -> list[Any]:
    """Every `Event` in a run folder's event files (in file-name order), CRCs checked.

    Raises:
      ImdbJaxError: a file is cut short or a CRC does not match.
    """
    event_pb2 = _proto("event_pb2")
    # Deferred: tensorboardX (~0.2 s) only to write or read events; --help imports this module.
    from tensorboardX.record_writer import masked_crc32c

    events = []
    for path in sorted(Path(run_dir).glob("*tfevents*")):
        data, offset = path.read_bytes(), 0
        while offset < len(data):
            if offset + 12 > len(data):
                raise ImdbJaxError(f"{path} is cut short at byte {offset}")
            header = data[offset : offset + 8]
            (length,) = struct.unpack("<Q", header)
            (header_crc,) = struct.unpack("<I", data[offset + 8 : offset + 12])
            body = data[offset + 12 : offset + 12 + length]
            if header_crc != masked_crc32c(header) or len(body) != length or offset + 16 + length > len(data):
                raise ImdbJaxError(f"{path} has a bad record at byte {offset}")
            (body_crc,) = struct.unpack("<I", data[offset + 12 + length : offset + 16 + length])
            if body_crc != masked_crc32c(body):
                raise ImdbJaxError(f"{path} has a bad record at byte {offset}")
            events.append(event_pb2.Event.FromString(body))
            offset += 16 + length
    return events


def read_run(run_dir: str | os.PathLike) -> dict[str, Any]:
    """A run folder read back: {"scalars": {tag: [(step, value), ...]}, "hparams": {name:
    value}, "status": "success" / "failure" / None (no session end)}."""
    api_pb2 = _proto("api_pb2")
    plugin_hparams_pb2 = _proto("plugin_hparams_pb2")

    scalars: dict[str, list[tuple[int, float]]] = {}
    hparams: dict[str, Any] = {}
    status = None
    for event in read_events(run_dir):
        for value in event.summary.value:
            if value.HasField("simple_value"):
                scalars.setdefault(value.tag, []).append((int(event.step), float(value.simple_value)))
            elif value.metadata.plugin_data.plugin_name == HPARAMS_PLUGIN:
                data = plugin_hparams_pb2.HParamsPluginData.FromString(value.metadata.plugin_data.content)
                if data.HasField("session_start_info"):
                    for key, item in data.session_start_info.hparams.items():
                        hparams[key] = getattr(item, item.WhichOneof("kind"))
                elif data.HasField("session_end_info"):
                    name = api_pb2.Status.Name(data.session_end_info.status)
                    status = {proto: short for short, proto in _STATUS.items()}.get(name, name)
    return {"scalars": scalars, "hparams": hparams, "status": status}
