"""The CreateDataVolumeTemplateFromVolume request, checked by ZStack's rules.

Strings are trimmed as Java trims them (ZStack's APIMessage.validate: leading and trailing characters up
to U+0020, control characters included, and nothing else); ``name`` is required (empty allowed) and at most
NAME_MAX_CHARS long, ``description`` at most DESCRIPTION_MAX_CHARS, both counted in UTF-16 code units as
Java's String.length() counts them (a character outside the BMP counts 2); every other character, control
characters and any script, is kept exactly. Uuids match UUID_PATTERN (32 lowercase hex digits);
``resourceUuid`` must also match ZStack's uuid pattern; ``backupStorageUuids`` omitted means
"choose", ``[]`` or null elements are invalid; ``systemTags`` and ``userTags`` are read at the top level
and inside ``params`` (where ZStack's SDK puts them), merged; each system tag must match one of
SYSTEM_TAGS, and a system tag that takes a value takes one (two ``template::format::`` tags are
invalid); ``userTags`` and ``tagUuids`` are kept as given. Keys the call does not have are invalid
(ZStack's Gson drops them silently; here a typo is told), except ``requestIp``, which ZStack's Java SDK
puts in ``params`` when it is set (sdk/.../ZSClient.java l.486-500) and which is ignored. The body
itself is read by zsagent.json_input (too deep, not UTF-8 or holding lone surrogates: SYS.1007).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any

from zsagent.errors import invalid
from zsagent.json_input import check_text, load_json

#: Limits on the trimmed strings, in characters; the OpenAPI schema (zsagent.api.app) is built from them too.
NAME_MAX_CHARS = 255
DESCRIPTION_MAX_CHARS = 2048
#: A uuid as ZStack writes it: 32 lowercase hex digits, no dashes.
UUID_PATTERN = r"^[0-9a-f]{32}$"
UUID_RE = re.compile(UUID_PATTERN)

# The system tags this agent understands: pattern -> what it does.
SYSTEM_TAGS = {
    r"ceph::copyMode::(copy|clone|flatten)": "how a Ceph backup storage gets the template "
                                             "(overrides the backup storage's mode)",
    r"template::format::(qcow2|raw)": "file format on filesystem/SFTP backup storage (overrides its format)",
    r"template::compression::(zstd|zlib|none)": "compress a qcow2 template on filesystem/SFTP backup storage "
                                                "with qemu-img (overrides the storage's compression)",
    r"sftp::bandwidth::[1-9][0-9]{0,14}": "bytes per second an SFTP upload may use (overrides the storage's)",
    r"consistency::quiesced": "a running VM's filesystems must be frozen for the snapshot; "
                              "without a guest agent the request fails (SYS.1006) instead of copying "
                              "crash-consistently",
}
_SYSTEM_TAG_RES = [re.compile(p) for p in SYSTEM_TAGS]
#: One system tag this agent understands, as one pattern (for the OpenAPI document).
SYSTEM_TAG_PATTERN = "^(" + "|".join(SYSTEM_TAGS) + ")$"
RESOURCE_UUID_PATTERN = r"^[0-9a-f]{8}[0-9a-f]{4}[1-5][0-9a-f]{3}[89ab][0-9a-f]{3}[0-9a-f]{12}$"
#: The tags above that carry a value after their last "::", by that prefix.
_VALUED_TAG_PREFIXES = ("ceph::copyMode", "template::format", "template::compression", "sftp::bandwidth")

#: The keys a body may have, at the top and in ``params``.
BODY_KEYS = ("params", "systemTags", "userTags")
PARAMS_KEYS = ("name", "description", "volumeUuid", "backupStorageUuids", "resourceUuid", "tagUuids",
               "systemTags", "userTags")
_IGNORED_PARAMS_KEYS = ("requestIp",)

#: Java's String.trim(): every character up to U+0020 (APIMessage.validate, header/src/main/java/org/zstack/
#: header/message/APIMessage.java l.218-220).
_JAVA_TRIMMED = "".join(map(chr, range(0x21)))


@dataclass(frozen=True)
class CreateRequest:
    name: str
    description: str | None
    volume_uuid: str
    backup_storage_uuids: tuple[str, ...] | None
    resource_uuid: str | None
    tag_uuids: tuple[str, ...]
    system_tags: tuple[str, ...]
    user_tags: tuple[str, ...]

    def system_tag(self, prefix: str) -> str | None:
        """The value of the last system tag ``<prefix>::<value>``, if any."""
        found = None
        for tag in self.system_tags:
            if tag.startswith(prefix + "::"):
                found = tag[len(prefix) + 2:]
        return found

    def fingerprint(self) -> str:
        """Identifies the parameters, for idempotent retries with the same resourceUuid."""
        fields = {"name": self.name, "description": self.description, "volumeUuid": self.volume_uuid,
                  "backupStorageUuids": self.backup_storage_uuids, "systemTags": self.system_tags,
                  "userTags": self.user_tags, "tagUuids": self.tag_uuids}
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()


def parse_body(raw: bytes | str | dict, path_volume_uuid: str | None = None) -> CreateRequest:
    """Parse and check a request body; the path's volumeUuid wins over the body's."""
    if isinstance(raw, dict):
        body = raw
        check_text(body)
    else:
        body = load_json(raw or b"{}")
    if not isinstance(body, dict):
        raise invalid("the request body must be a JSON object")
    params = body.get("params")
    if not isinstance(params, dict):
        raise invalid("field 'params' is required and must be an object")
    _known_keys(body, BODY_KEYS, "the request body")
    _known_keys(params, PARAMS_KEYS + _IGNORED_PARAMS_KEYS, "params")

    name = _string(params, "name", required=True, max_length=NAME_MAX_CHARS)
    description = _string(params, "description", max_length=DESCRIPTION_MAX_CHARS)
    volume_uuid = path_volume_uuid if path_volume_uuid is not None else _string(params, "volumeUuid",
                                                                                 required=True)
    volume_uuid = _uuid(java_trim(volume_uuid), "volumeUuid")
    bs = params.get("backupStorageUuids")
    if bs is not None:
        bs = _string_list(params, "backupStorageUuids")
        if not bs:
            raise invalid("field 'backupStorageUuids' must not be empty; omit it to let the agent choose")
        bs = tuple(dict.fromkeys(_uuid(u, "backupStorageUuids") for u in bs))
    resource_uuid = _string(params, "resourceUuid")
    if resource_uuid is not None and not re.fullmatch(RESOURCE_UUID_PATTERN, resource_uuid):
        raise invalid(f"field 'resourceUuid' {resource_uuid!r} is not a valid ZStack uuid "
                      "(32 lowercase hex digits, version 1-5, variant 8-b)")
    tag_uuids = tuple(_uuid(u, "tagUuids") for u in _string_list(params, "tagUuids"))
    system_tags = _tags(body, params, "systemTags")
    for tag in system_tags:
        if not any(r.fullmatch(tag) for r in _SYSTEM_TAG_RES):
            raise invalid(f"system tag {tag!r} is not supported; supported patterns: "
                          + ", ".join(SYSTEM_TAGS))
    for prefix in _VALUED_TAG_PREFIXES:
        values = [t for t in system_tags if t.startswith(prefix + "::")]
        if len(values) > 1:
            raise invalid(f"system tags {values!r} conflict: give {prefix}::<value> once")
    user_tags = _tags(body, params, "userTags")
    request = CreateRequest(name, description, volume_uuid, bs, resource_uuid or None, tag_uuids,
                            tuple(system_tags), tuple(user_tags))
    if request.system_tag("template::compression") not in (None, "none") \
            and request.system_tag("template::format") == "raw":
        raise invalid("system tag template::compression needs the qcow2 format, not template::format::raw")
    return request


def _tags(body: dict[str, Any], params: dict[str, Any], key: str) -> list[str]:
    """The tags of ``key`` from the top level and from ``params``, merged: first the top level's, then
    the others of ``params``, each once, in order.

    ZStack's Java SDK puts systemTags/userTags inside ``params`` (sdk/.../ZSClient.java l.484-545: every
    action parameter goes into ``{parameterName: params}``); ZStack's REST server reads them there (it
    rehashes ``params`` into the APIMessage, whose systemTags/userTags fields they fill,
    rest/.../RestServer.java l.960) and at the top level (l.998-1006, for methods other than GET and
    DELETE). When both are given ZStack keeps only the top level's; merging them loses no tag a client
    sent, and it is the same whenever only one place has tags. Duplicates go, as ZStack's tag manager
    drops system tags (tag/.../TagManagerImpl.java intercept l.932).
    """
    return list(dict.fromkeys(_string_list(body, key) + _string_list(params, f"params.{key}", key)))


def _string(obj: dict[str, Any], key: str, required: bool = False, max_length: int | None = None) -> str | None:
    value = obj.get(key)
    if value is None:
        if required:
            raise invalid(f"field '{key}' is required")
        return None
    if not isinstance(value, str):
        raise invalid(f"field '{key}' must be a string, not {_json_type(value)}")
    value = java_trim(value)
    if max_length is not None and (length := java_length(value)) > max_length:
        raise invalid(f"field '{key}' is {length} characters long (UTF-16 code units); the limit is {max_length}")
    return value


def java_trim(text: str) -> str:
    """``text`` as Java's String.trim() leaves it."""
    return text.strip(_JAVA_TRIMMED)


def java_length(text: str) -> int:
    """Java's String.length(): UTF-16 code units (ApiMessageParamValidator.java l.29-33 compares it)."""
    return len(text) + sum(1 for c in text if ord(c) > 0xFFFF)


def _known_keys(obj: dict[str, Any], known: tuple[str, ...], where: str) -> None:
    unknown = [k for k in obj if k not in known]
    if unknown:
        raise invalid(f"{where} has unknown field(s) {', '.join(map(repr, unknown))}; "
                      f"the fields are {', '.join(k for k in known if k not in _IGNORED_PARAMS_KEYS)}")


def _string_list(obj: dict[str, Any], key: str, field: str | None = None) -> list[str]:
    """The list of strings at ``field`` (default: ``key``) of ``obj``; errors name it ``key``."""
    value = obj.get(field or key)
    if value is None:
        return []
    if not isinstance(value, list):
        raise invalid(f"field '{key}' must be a list of strings, not {_json_type(value)}")
    for item in value:
        if item is None:
            raise invalid(f"field '{key}' must not contain null")
        if not isinstance(item, str):
            raise invalid(f"field '{key}' must contain only strings, not {_json_type(item)}")
    return [java_trim(item) for item in value]


def _uuid(value: str, key: str) -> str:
    if not UUID_RE.fullmatch(value):
        raise invalid(f"field '{key}': {value!r} is not a uuid (32 lowercase hex digits)")
    return value


def _json_type(value: Any) -> str:
    return {bool: "a boolean", int: "a number", float: "a number", str: "a string", list: "a list",
            dict: "an object"}.get(type(value), type(value).__name__)
