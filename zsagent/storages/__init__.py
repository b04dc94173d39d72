"""Backup-storage kinds: one module each behind one protocol (base.StorageKind), and their registry.

    ceph        RBD images in a pool (copy, clone or flatten)
    filesystem  files under a local or NFS directory
    sftp        files on an SFTP server

A new kind is one module here, one line in ``KINDS``, its keys in systemd/zsagent.toml.example and
README.md, and its tests.
"""

from __future__ import annotations

from zsagent.storages import ceph, filesystem, sftp
from zsagent.storages.base import Destination, Finding, Runtime, StorageKind, TemplateJob, TemplateTags

KINDS: dict[str, StorageKind] = {kind.name: kind for kind in (ceph.KIND, filesystem.KIND, sftp.KIND)}

__all__ = ["KINDS", "Destination", "Finding", "Runtime", "StorageKind", "TemplateJob", "TemplateTags"]
