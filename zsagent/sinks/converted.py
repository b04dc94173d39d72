"""Templates made by the qemu-img engine (zsagent.qemu_img) instead of the copy pipeline's sinks.

``ConvertedFile``    qemu-img writes ``<path>.part`` next to the final name; hashed, fsynced, published
                     without ever replacing a file (a filesystem backup storage).
``ConvertedUpload``  qemu-img writes a file in a local spool directory; the copy pipeline then uploads it
                     into a Sink (e.g. an SFTP raw upload, so its holes are not sent) hashing it on the way;
                     the spool file is always removed.

Both read the volume themselves, so the volume is read once more per converted template. Like a Sink they
publish in two steps: ``prepare(source, progress, cancel)`` converts, hashes and (for uploads) sends
everything under temporary names; ``commit()`` only publishes. So a job cancelled or failed during any
pass publishes nothing. Progress goes to ``progress(fraction)``, 0..1.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from zsagent.copy.errors import AllSinksFailed
from zsagent.copy.pipeline import PipelineConfig, run_copy
from zsagent.filemodes import private_dir
from zsagent.qemu_img import ConvertOptions, convert, hash_file, qemu_input_of
from zsagent.sinks.base import NO_JOURNAL, Journal, Sink, SinkResult
from zsagent.sinks.local_files import LocalTemplateFile, fsync_path
from zsagent.sources.raw_file import RawFileSource

log = logging.getLogger(__name__)

FractionCallback = Callable[[float], None]
SPOOL_KIND = "spool"
"""Journal kind of a local spool file (spec ``{"path"}``), removed by zsagent.cleanup."""


class Converter(Protocol):
    """One template that reads the source itself: ``prepare`` makes it under a temporary name, ``commit``
    publishes it; ``abort()`` removes whatever it created and never raises (it may be called at any point,
    also after a failed prepare or commit)."""

    description: str

    def prepare(self, source, progress: FractionCallback, cancel: threading.Event) -> None: ...

    def commit(self) -> SinkResult: ...

    def abort(self) -> None: ...


class ConvertedFile:
    """A template at ``path`` on a local (or NFS) filesystem, converted in place under ``<path>.part``.

    ``journal``/``root``: see zsagent.sinks.local_files.LocalTemplateFile.
    """

    def __init__(self, path: str | os.PathLike[str], options: ConvertOptions,
                 pipeline: PipelineConfig | None = None, journal: Journal = NO_JOURNAL,
                 root: str | os.PathLike[str] | None = None) -> None:
        self.file = LocalTemplateFile(path, journal, root=root)
        self.path, self.part = self.file.path, self.file.part
        self.description = str(self.path)
        self.options = options
        self.pipeline = pipeline
        self._md5: str | None = None

    def prepare(self, source, progress: FractionCallback, cancel: threading.Event) -> None:
        qemu_input = qemu_input_of(source)
        os.close(self.file.create())  # the .part name is ours before qemu-img writes it
        convert(qemu_input, self.part, self.options, progress=lambda f: progress(0.9 * f), cancel=cancel)
        self._md5 = hash_file(self.part, self.pipeline, cancel)
        fsync_path(self.part)
        progress(1.0)

    def commit(self) -> SinkResult:
        if self._md5 is None:
            raise ValueError(f"{self.description}: commit before prepare")
        return SinkResult(str(self.path), self.file.publish(), md5=self._md5)

    def abort(self) -> None:
        self.file.abort()


class ConvertedUpload:
    """A template converted into ``spool_file`` (local), then uploaded into ``sink`` by the pipeline.

    The md5 is the pipeline's MD5 of the spool file's bytes, i.e. of exactly what ``sink`` stores (and
    what ``sink`` checks against the server's, when it does). The spool file is journalled as kind
    "spool" before it is created.
    """

    def __init__(self, spool_file: str | os.PathLike[str], sink: Sink, options: ConvertOptions,
                 pipeline: PipelineConfig | None = None, journal: Journal = NO_JOURNAL) -> None:
        self.spool_file = Path(spool_file)
        self.sink = sink
        self.description = sink.description
        self.options = options
        self.pipeline = pipeline
        self.journal = journal
        self._spool_id: int | None = None
        self._md5: str | None = None

    def prepare(self, source, progress: FractionCallback, cancel: threading.Event) -> None:
        qemu_input = qemu_input_of(source)
        private_dir(self.spool_file.parent)
        self._spool_id = self.journal.record(SPOOL_KIND, {"path": str(self.spool_file)})
        try:
            os.close(os.open(self.spool_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600))
        except FileExistsError:  # not ours
            self.journal.forget(self._spool_id)
            self._spool_id = None
            raise
        try:
            convert(qemu_input, self.spool_file, self.options, progress=lambda f: progress(0.5 * f),
                    cancel=cancel)
            spooled = RawFileSource(self.spool_file)
            try:
                result = run_copy(spooled, [_HeldCommit(self.sink)], self.pipeline, cancel=cancel,
                                  progress=lambda done, total: progress(0.5 + 0.5 * done / max(total, 1)))
            except AllSinksFailed as e:
                raise e.errors[0] from e
            finally:
                spooled.close()
        finally:
            self._remove_spool()
        self._md5 = result.md5

    def commit(self) -> SinkResult:
        if self._md5 is None:
            raise ValueError(f"{self.description}: commit before prepare")
        published = self.sink.commit(self._md5)
        return SinkResult(published.install_path, published.actual_size, published.parent,
                          md5=published.md5 or self._md5)

    def abort(self) -> None:
        try:
            self.sink.abort()
        except Exception:  # noqa: BLE001 - abort never raises
            log.exception("abort of %s failed", self.description)
        self._remove_spool()

    def _remove_spool(self) -> None:
        if self._spool_id is not None:
            try:
                self.spool_file.unlink(missing_ok=True)
            except OSError:
                log.exception("could not remove the spool file %s", self.spool_file)
                return
            self.journal.forget(self._spool_id)
            self._spool_id = None


class _HeldCommit:
    """A sink whose commit waits: the pipeline's commit() of the upload is a no-op, the real one comes
    from ConvertedUpload.commit() once every template of the job is ready."""

    def __init__(self, sink: Sink) -> None:
        self.description = sink.description
        self.sequential = sink.sequential
        self.open, self.write, self.abort = sink.open, sink.write, sink.abort
        if sink.sequential:
            self.zero = sink.zero
        if hasattr(sink, "interrupt"):
            self.interrupt = sink.interrupt

    def commit(self, content_md5: str | None = None) -> SinkResult:
        return SinkResult(self.description, 0)
