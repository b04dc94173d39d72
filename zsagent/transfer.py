"""One job's copy: the pipeline's single pass into its sinks, plus the templates qemu-img converts.

    converters prepare   (each: qemu-img reads the source, the result is hashed / uploaded, unpublished)
    pipeline pass        (every sink at once; the sinks publish at its end)
    converters commit    (publish: a rename)

Converters go first so that a cancel or a failure of the pipeline pass leaves nothing published: until
the pipeline's sinks commit, everything lives under temporary names. A converter that fails is dropped
like a failing sink while the others go on; when nothing is left, AllSinksFailed.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence

from zsagent.copy.errors import AllSinksFailed, CopyCancelled, SinkError
from zsagent.copy.pipeline import CopyResult, PipelineConfig, ProgressCallback, run_copy
from zsagent.sinks import qcow2_direct
from zsagent.sinks.base import Sink
from zsagent.sinks.converted import Converter
from zsagent.sources.base import Source

log = logging.getLogger(__name__)


def transfer(source: Source, sinks: Sequence[Sink], converters: Sequence[Converter],
             config: PipelineConfig | None = None, *, progress: ProgressCallback | None = None,
             cancel: threading.Event | None = None, hash_content: bool = True) -> CopyResult:
    """Copy ``source`` into ``sinks`` (one pass) and every converter; ``progress`` spans all passes.
    A lone local qcow2 template is made straight from the source's layout (zsagent.sinks.qcow2_direct)."""
    if qcow2_direct.applies(source, sinks, converters, hash_content):
        return qcow2_direct.copy_direct(source, sinks[0], config, progress=progress, cancel=cancel)
    if not converters:
        return run_copy(source, sinks, config, progress=progress, cancel=cancel, hash_content=hash_content)
    cancel = cancel or threading.Event()
    size = source.size
    passes = len(converters) + (1 if sinks else 0)

    def report(index: int, fraction: float) -> None:
        if progress is not None:
            progress(int((index + min(max(fraction, 0.0), 1.0)) * size), passes * size)

    failed: list[SinkError] = []
    ready: list[Converter] = []
    try:
        for index, converter in enumerate(converters):
            try:
                converter.prepare(source, lambda f, i=index: report(i, f), cancel)
                ready.append(converter)
            except CopyCancelled:
                converter.abort()
                raise
            except Exception as e:  # noqa: BLE001 - this template fails alone
                log.warning("%s failed: %s", converter.description, e)
                converter.abort()
                failed.append(_sink_error(converter, e))
        result = CopyResult(size, None, [])
        if sinks:
            try:
                result = run_copy(source, sinks, config, cancel=cancel, hash_content=hash_content,
                                  progress=lambda done, total: report(len(converters), done / max(total, 1)))
            except AllSinksFailed as e:
                if not ready:
                    raise AllSinksFailed(failed + e.errors) from e
                failed += e.errors
        if cancel.is_set():  # a cancel that came after the last pass still publishes nothing
            raise CopyCancelled()
    except BaseException:
        for converter in ready:
            converter.abort()
        raise
    for converter in ready:
        try:
            result.add(converter, converter.commit())
        except Exception as e:  # noqa: BLE001
            converter.abort()
            failed.append(_sink_error(converter, e))
    result.failed += failed
    if not result.published:
        raise AllSinksFailed(result.failed)
    return result


def _sink_error(converter: Converter, error: Exception) -> SinkError:
    """The converter's failure as a SinkError that names it (an upload's SinkError names the upload's sink,
    which the caller does not know: it is re-issued for the converter)."""
    message = str(error) or type(error).__name__
    if isinstance(error, SinkError):
        message = message.removeprefix(f"{error.description}: ")
    failure = SinkError(converter.description, message, converter)
    failure.__cause__ = error
    return failure
