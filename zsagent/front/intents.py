"""Local/NFS templates in one pass: ``createtemplate`` is answered with an intent, not a temp file.

The management node asks for a temp qcow2 under ``templateWorkspace/`` ([zs] LKB l.3509-3552, NKB
l.1426-1475), uploads it, then deletes it. We record what the file would be (the volume, its file's
identity, the streaming writer's planned qcow2 layout) and answer with that layout's exact sizes; the
upload streams the volume straight to the server, refusing to if the volume file changed meanwhile (its
size, mtime or inode) or would give another layout. Intents live in the store (``front_intents``) and
expire after ``[front] intent_ttl_s``; no file exists, so expiry leaves nothing to remove.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from typing import Any

from zsagent import errors
from zsagent.catalog import Volume
from zsagent.copy.pipeline import plan
from zsagent.qcow2 import DEFAULT_CLUSTER_BITS, plan_layout
from zsagent.sinks.base import NO_JOURNAL
from zsagent.sources.open import open_source


@dataclass(frozen=True)
class Intent:
    """install_path: the temp path the command named (never created); volume_uuid/volume_path: the
    volume; identity: (size, mtime_ns, inode) of the volume file when measured; virtual_size / file_size:
    bytes of the volume and of the qcow2 the upload writes; api_id: the API it belongs to (cancel)."""

    install_path: str
    image_uuid: str
    volume_uuid: str
    volume_path: str
    identity: tuple[int, int, int]
    virtual_size: int
    file_size: int
    api_id: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "identity": list(self.identity)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Intent:
        fields = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**{**fields, "identity": tuple(fields["identity"])})

    def check_unchanged(self, volume: Volume) -> None:
        if volume.path != self.volume_path or file_identity(volume.path) != self.identity:
            raise errors.operation_failed(f"volume file {self.volume_path} changed since createtemplate answered "
                                          "(it must not be written while its template is made); create the "
                                          "template again")


def file_identity(path: str) -> tuple[int, int, int]:
    st = os.stat(path)
    return st.st_size, st.st_mtime_ns, st.st_ino


def measure(volume: Volume, image_uuid: str, install_path: str, api_id: str | None) -> Intent:
    """Open the (stopped) volume and plan the qcow2 the streaming writer will make of it."""
    identity = file_identity(volume.path)
    with open_source(volume, NO_JOURNAL) as source:
        layout = plan_layout(source.size, plan(source), DEFAULT_CLUSTER_BITS)
    return Intent(install_path, image_uuid, volume.uuid, volume.path, identity, layout.virtual_size,
                  layout.file_size, api_id)
