"""What the file-based kinds (filesystem, sftp) share: ZStack's template layout, the template format
and whether qemu-img makes the template."""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass

from zsagent import errors
from zsagent.qemu_img import ConvertOptions

FORMATS = ("qcow2", "raw")
COMPRESSIONS = ("none", "zstd", "zlib")
ENGINES = ("stream", "qemu-img")

log = logging.getLogger(__name__)
_told_engine: set[str] = set()
_told_engine_lock = threading.Lock()


def _say_engine_not_used(bs_uuid: str) -> None:
    """``engine = "qemu-img"`` with uncompressed output: the one-pass writers make that template (measured
    faster than ``qemu-img convert`` + hashing + fsync, see bench/README.md); said once per storage."""
    with _told_engine_lock:
        if bs_uuid in _told_engine:
            return
        _told_engine.add(bs_uuid)
    log.info("backup storage %s: engine \"qemu-img\" is used for compressed templates only; uncompressed "
             "ones are written in one pass by the agent", bs_uuid)


def template_path(root: str, account_uuid: str, image_uuid: str, image_format: str) -> str:
    """ZStack's layout: ``<root>/dataVolumeTemplates/acct-<account>/<image>/<image>.<format>``."""
    return os.path.join(root, "dataVolumeTemplates", f"acct-{account_uuid}", image_uuid,
                        f"{image_uuid}.{image_format}")


@dataclass(frozen=True)
class FileTemplates:
    """path: the storage's root; format: qcow2 | raw; compression: none | zstd | zlib (qcow2 compressed by
    qemu-img); engine: stream (the one-pass writers) | qemu-img (``qemu-img convert``, a second read of
    the volume)."""

    path: str
    format: str = "qcow2"
    compression: str = "none"
    engine: str = "stream"

    def __post_init__(self) -> None:
        if self.compression != "none" and self.format != "qcow2":
            raise ValueError("compression: needs format \"qcow2\"")

    @property
    def uses_qemu_img(self) -> bool:
        return self.compression != "none" or self.engine == "qemu-img"

    def plan(self, bs_uuid: str, job) -> tuple[str, str, ConvertOptions | None]:
        """(format, path, qemu-img options or None) of ``job``'s template here, tags taken into account."""
        image_format = job.tags.format or self.format
        options = convert_options(bs_uuid, self, image_format, job.tags.compression)
        return image_format, template_path(self.path, job.account_uuid, job.image_uuid, image_format), options


def convert_options(bs_uuid: str, templates: FileTemplates, image_format: str,
                    compression_tag: str | None) -> ConvertOptions | None:
    """What qemu-img should make, or None when the streaming writer / raw sinks do it; ZsError for a
    compression the format cannot have."""
    compression = compression_tag or templates.compression
    if compression == "none":
        compression = None
    if compression and image_format != "qcow2":
        raise errors.invalid(f"a {compression}-compressed template must be qcow2, but backup storage "
                             f"[uuid:{bs_uuid}] stores {image_format} templates; add the system tag "
                             "template::format::qcow2")
    if compression is None:
        if templates.engine == "qemu-img":
            _say_engine_not_used(bs_uuid)
        return None
    return ConvertOptions(output_format=image_format, compression=compression)
