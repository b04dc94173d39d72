"""Filesystem backup storage: templates as files under a local (or NFS-mounted) directory, in ZStack's
layout (zsagent.storages.templates)."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from zsagent.sinks.base import Journal
from zsagent.sinks.converted import ConvertedFile
from zsagent.sinks.file_stream import FileStreamTarget
from zsagent.sinks.qcow2_stream import Qcow2StreamSink
from zsagent.sinks.raw_file import RawFileSink
from zsagent.storages.base import Destination, Finding, Runtime, TemplateJob
from zsagent.storages.templates import COMPRESSIONS, ENGINES, FORMATS, FileTemplates


@dataclass(frozen=True)
class FilesystemSettings(FileTemplates):
    """path: the directory templates go under (see FileTemplates for format, compression, engine)."""

    REQUIRED: ClassVar[tuple[str, ...]] = ("path",)
    CHOICES: ClassVar[dict[str, tuple[str, ...]]] = {"format": FORMATS, "compression": COMPRESSIONS,
                                                     "engine": ENGINES}


def remove_file(path: str, root: str) -> None:
    """Unlink ``path`` and the directories above it that are empty now, up to (not including) root."""
    target = Path(path)
    target.unlink(missing_ok=True)
    root_path = Path(root).resolve()
    for directory in target.parents:
        if directory.resolve() == root_path or root_path not in directory.resolve().parents:
            break
        try:
            directory.rmdir()
        except OSError:
            break


class FilesystemStorage:
    name = "filesystem"
    settings = FilesystemSettings

    def destination(self, bs, job: TemplateJob, journal: Journal, runtime: Runtime) -> Destination:
        settings: FilesystemSettings = bs.settings
        image_format, path, options = settings.plan(bs.uuid, job)
        ref = {"kind": self.name, "path": path, "root": settings.path}
        if options is not None:
            converter = ConvertedFile(path, options, job.pipeline, journal=journal, root=settings.path)
            return Destination(bs, path, image_format, converter=converter, ref=ref)
        if image_format == "raw":
            sink = RawFileSink(path, journal, root=settings.path)
        else:
            sink = Qcow2StreamSink(FileStreamTarget(path, journal, root=settings.path))
        return Destination(bs, path, image_format, sink=sink, ref=ref)

    def remove(self, spec: dict[str, Any], runtime: Runtime) -> None:
        remove_file(spec["path"], spec["root"])

    def check(self, bs, runtime: Runtime) -> Iterator[Finding]:
        path = bs.settings.path
        if writable_dir(path):
            yield (True, f"backup storage {bs.uuid}: {path} is writable", "")
        else:
            yield (False, f"backup storage {bs.uuid}: {path} is missing or not writable",
                   "mount it there and let the agent write it (and list it in ReadWritePaths=)")

    def free_bytes(self, bs) -> int | None:
        try:
            return shutil.disk_usage(bs.settings.path).free
        except OSError:
            return 0


def writable_dir(path: str, create: bool = False) -> bool:
    """Whether the agent can create files in ``path`` (made first when ``create``)."""
    try:
        if create:
            Path(path).mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".zsagent-check-"):
            return True
    except OSError:
        return False


KIND = FilesystemStorage()
