"""ZStack's ImageInventory for a data volume template, with ZStack's date text."""

from __future__ import annotations

from datetime import datetime
from typing import Any


def zstack_date(when: datetime | None = None) -> str:
    """ZStack's (Java's) date text in the agent's local time, e.g. "Nov 26, 2026 3:51:16 PM"."""
    when = (when or datetime.now()).astimezone()
    hour = when.hour % 12 or 12
    return f"{when:%b} {when.day}, {when.year} {hour}:{when:%M:%S} {'AM' if when.hour < 12 else 'PM'}"


def backup_storage_ref(image_uuid: str, bs_uuid: str, install_path: str, md5: str | None,
                       date: str) -> dict[str, Any]:
    return {"imageUuid": image_uuid, "backupStorageUuid": bs_uuid, "installPath": install_path,
            "exportUrl": None, "exportMd5Sum": md5, "status": "Ready", "createDate": date, "lastOpDate": date}


def image_inventory(*, uuid: str, name: str, description: str | None, volume_uuid: str, size: int,
                    actual_size: int, md5: str | None, image_format: str, platform: str | None,
                    architecture: str | None, guest_os_type: str | None, virtio: bool,
                    refs: list[dict[str, Any]], date: str) -> dict[str, Any]:
    return {
        "uuid": uuid, "name": name, "description": description, "state": "Enabled", "status": "Ready",
        "size": size, "actualSize": actual_size, "md5Sum": md5, "url": f"volume://{volume_uuid}",
        "mediaType": "DataVolumeTemplate", "guestOsType": guest_os_type, "type": "zstack",
        "platform": platform, "architecture": architecture, "format": image_format, "system": False,
        "virtio": virtio, "createDate": date, "lastOpDate": date, "backupStorageRefs": refs,
    }
