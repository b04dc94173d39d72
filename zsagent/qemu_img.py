"""The qemu-img engine: a file template made by ``qemu-img convert`` reading the volume itself.

It does what the streaming writer does not (compressed qcow2: ``-c -o compression_type=zstd``) and is
the reference the streaming writer is measured against. Two passes instead of one:

    convert   qemu-img convert -p -f <fmt> <volume as qemu names it> -O <fmt> [-c | -W] -m N <out>.part
    hash      read the converted file once with the copy pipeline (holes hashed without reading)

``-W`` (out-of-order writes) is used where qemu-img allows it, i.e. without compression. Progress comes
from qemu-img's ``-p`` output. The converted file is then delivered by the caller (published in place,
or uploaded from a spool directory).

Sources name themselves for qemu with ``Source.qemu_input`` (a QemuInput, zsagent.sources.base): (format,
filename), e.g. ("qcow2", "/ps/vol.qcow2"), ("raw", "rbd:pool/image@snap:conf=..."); None when qemu-img
cannot read them.
"""

from __future__ import annotations

import os
import re
import subprocess
import threading
from collections.abc import Callable
from dataclasses import dataclass

from zsagent.copy.errors import CopyCancelled
from zsagent.copy.pipeline import PipelineConfig, run_copy
from zsagent.processes import dies_with_agent, stop_process
from zsagent.sources.base import QemuInput, Source  # QemuInput also importable from here, as it always was
from zsagent.sources.raw_file import RawFileSource

COMPRESSIONS = ("zstd", "zlib")
SECTOR = 512
COROUTINES = 8
"""qemu-img's ``-m``: parallel requests (its maximum is 16)."""
_PROGRESS_RE = re.compile(rb"\((\d+(?:\.\d+)?)/100%\)")
_POLL_S = 0.1

class EngineUnavailable(Exception):
    """qemu-img cannot read this source (e.g. a volume of the fake Ceph backend)."""


class ConvertFailed(Exception):
    """qemu-img convert exited with an error; the message carries its stderr."""


@dataclass(frozen=True)
class ConvertOptions:
    """output_format: "qcow2" | "raw"; compression: "zstd" | "zlib" | None (qcow2 only)."""

    output_format: str = "qcow2"
    compression: str | None = None
    coroutines: int = COROUTINES

    def __post_init__(self) -> None:
        if self.output_format not in ("qcow2", "raw"):
            raise ValueError(f"output format {self.output_format!r} is not qcow2 or raw")
        if self.compression is not None:
            if self.compression not in COMPRESSIONS:
                raise ValueError(f"compression {self.compression!r} is not one of {', '.join(COMPRESSIONS)}")
            if self.output_format != "qcow2":
                raise ValueError("compression needs the qcow2 format")
        if not 1 <= self.coroutines <= 16:
            raise ValueError("coroutines must be between 1 and 16")


def qemu_input_of(source: Source) -> QemuInput:
    """How qemu-img reads ``source``; EngineUnavailable when it cannot."""
    found = source.qemu_input
    if found is None:
        raise EngineUnavailable(f"qemu-img cannot read this volume ({type(source).__name__}: only real Ceph, "
                                "file volumes and NBD exports)")
    if source.size % SECTOR:
        # qemu rounds such a size up (a template larger than the volume), its rbd driver even asserts
        raise EngineUnavailable(f"qemu-img works in {SECTOR}-byte sectors and cannot keep this volume's size of "
                                f"{source.size} bytes; make this template uncompressed with the stream engine")
    return found


def rbd_filename(pool: str, image: str, snapshot: str, *, conf: str | None, client: str,
                 keyring: str | None) -> str:
    """qemu's ``rbd:`` filename of ``pool/image@snapshot``, with the agent's Ceph credentials (the
    keyring too, which qemu's structured rbd options cannot name)."""
    name = f"rbd:{_escape(pool)}/{_escape(image)}@{_escape(snapshot)}"
    options = [("id", client)] + [(k, v) for k, v in (("conf", conf), ("keyring", keyring)) if v]
    return name + "".join(f":{key}={_escape(value)}" for key, value in options)


def _escape(value: str) -> str:
    """qemu's rbd filename parser splits on ':', '/', '@' unless escaped with a backslash."""
    return re.sub(r"([\\:/@])", r"\\\1", value)


def convert_argv(qemu_input: QemuInput, output: str, options: ConvertOptions) -> list[str]:
    source_format, filename = qemu_input
    argv = ["qemu-img", "convert", "-p", "-f", source_format, "-O", options.output_format,
            "-m", str(options.coroutines)]
    if options.output_format == "qcow2":
        argv += ["-o", "compat=1.1" + (f",compression_type={options.compression}" if options.compression else "")]
    # qemu-img refuses out-of-order writes together with compression
    argv.append("-c" if options.compression else "-W")
    return [*argv, filename, output]


def convert(qemu_input: QemuInput, output: str | os.PathLike[str], options: ConvertOptions, *,
            progress: Callable[[float], None] | None = None, cancel: threading.Event | None = None) -> None:
    """Run qemu-img convert into ``output`` (an absolute path, replaced if it exists).

    ``progress(fraction)`` is called with 0..1 as qemu-img reports it; ``cancel`` stops qemu-img and
    raises CopyCancelled. The caller removes ``output`` after a failure.
    """
    output = os.path.abspath(output)  # a relative name with ':' would read as a protocol to qemu
    argv = dies_with_agent(convert_argv(qemu_input, output, options))
    process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    errors: list[bytes] = []
    readers = [threading.Thread(target=_follow_progress, args=(process.stdout, progress), daemon=True),
               threading.Thread(target=lambda: errors.append(process.stderr.read()), daemon=True)]
    for reader in readers:
        reader.start()
    cancel = cancel or threading.Event()
    try:
        while process.poll() is None:
            if cancel.wait(_POLL_S):
                raise CopyCancelled("qemu-img convert was cancelled")
    except BaseException:
        stop_process(process)
        raise
    finally:
        for reader in readers:
            reader.join()
        process.stdout.close()
        process.stderr.close()
    if process.returncode != 0:
        message = b"".join(errors).decode(errors="replace").strip() or f"exit status {process.returncode}"
        raise ConvertFailed(f"qemu-img convert failed: {message}")


def _follow_progress(stream, progress: Callable[[float], None] | None) -> None:
    """qemu-img -p rewrites one line with '\\r': ``    (12.34/100%)``."""
    pending = b""
    while chunk := stream.read1(4096):
        pending += chunk
        *lines, pending = re.split(rb"[\r\n]", pending)
        for line in lines:
            found = _PROGRESS_RE.search(line)
            if found and progress is not None:
                progress(min(1.0, float(found.group(1)) / 100))


def hash_file(path: str | os.PathLike[str], config: PipelineConfig | None = None,
              cancel: threading.Event | None = None) -> str:
    """Hex MD5 of a local file's bytes, read by the copy pipeline (parallel reads, holes not read)."""
    source = RawFileSource(path)
    try:
        return run_copy(source, [], config, cancel=cancel).md5
    finally:
        source.close()

