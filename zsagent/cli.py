"""The `zsagent` command: the daemon, manual copies, and what operators look at.

Exit codes a script can rely on: 0 done; 1 the operation failed (the message says why); 2 bad usage
or configuration; 130 cancelled with Ctrl-C (nothing is left behind).
"""

from __future__ import annotations

import json
import signal
import sys
import threading
import time
from typing import Any

import click

from zsagent import errors
from zsagent.config import DEFAULT_CONFIG_PATH, Config, ConfigError, load_config
from zsagent.errors import ZsError

EXIT_FAILED, EXIT_USAGE, EXIT_CANCELLED = 1, 2, 130

config_option = click.option(
    "--config", "config_path", type=click.Path(dir_okay=False), envvar="ZSAGENT_CONFIG",
    default=DEFAULT_CONFIG_PATH, show_default=True, help="The agent's TOML configuration (env ZSAGENT_CONFIG).")


def load_or_exit(path: str) -> Config:
    try:
        return load_config(path)
    except ConfigError as e:
        click.echo(f"zsagent: bad configuration: {e}", err=True)
        sys.exit(EXIT_USAGE)


def open_service(config: Config):
    from zsagent.cluster.agents import agent_id
    from zsagent.copy import md5
    from zsagent.filemodes import private_dir
    from zsagent.service import TemplateService
    from zsagent.store import open_store

    private_dir(config.agent.data_dir)
    md5.choose(config.agent.data_dir)  # the cached choice the daemon uses (measured if none yet)
    store = open_store(config, agent_id(config))
    return TemplateService(config, store)


def fail(error: ZsError | Exception, what: str) -> None:
    if isinstance(error, ZsError):
        code = error.error
        cause = f" (cause: {code.cause.details})" if code.cause else ""
        click.echo(f"zsagent: {what} failed: {code.code}: {code.details}{cause}", err=True)
    else:
        click.echo(f"zsagent: {what} failed: {error}", err=True)
    sys.exit(EXIT_FAILED)


@click.group(name="zsagent", context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """zsagent makes ZStack data volume templates from Ceph and file volumes.

    \b
    Examples:
      zsagent serve --config /etc/zsagent/zsagent.toml
      zsagent copy 0cd599ec519249489475112a058bb93a --to 1b8ab68b7e224a30aa31f00f1db2b5a6
      zsagent images list
      zsagent check
    """


@main.command()
@config_option
@click.option("--log-format", type=click.Choice(["text", "json"]), default="text", show_default=True,
              help="One line per event on stderr, as text or JSON.")
def serve(config_path: str, log_format: str) -> None:
    """Run the agent's HTTP API (the systemd service runs this).

    \b
    Example:
      zsagent serve --config /etc/zsagent/zsagent.toml --log-format json
    """
    from zsagent.daemon import serve as run_daemon
    from zsagent.logs import setup_logging

    setup_logging(log_format)
    config = load_or_exit(config_path)
    try:
        sys.exit(run_daemon(config))
    except ZsError as e:  # e.g. the RADOS store's pool is missing: the daemon refuses to start
        fail(e, "starting the agent")


@main.command()
@config_option
@click.option("--log-format", type=click.Choice(["text", "json"]), default="text", show_default=True,
              help="One line per event on stderr, as text or JSON.")
def front(config_path: str, log_format: str) -> None:
    """Stand in front of ZStack's own Ceph or KVM agent (the [front] section; systemd's
    zsagent-front.service runs this): template commands are done here, everything else is passed on.

    \b
    Example:
      zsagent front --config /etc/zsagent/zsagent.toml
    """
    from zsagent.front.server import serve_front
    from zsagent.logs import setup_logging

    setup_logging(log_format)
    config = load_or_exit(config_path)
    if not config.front.configured:
        click.echo(f"zsagent: bad configuration: {config.source}: front: fronts and upstream_url are required "
                   "for `zsagent front`", err=True)
        sys.exit(EXIT_USAGE)
    try:
        sys.exit(serve_front(config))
    except ZsError as e:
        fail(e, "starting the front")


@main.command()
@click.argument("volume_uuid")
@click.option("--to", "backup_storages", multiple=True, metavar="BS_UUID",
              help="Backup storage uuid (repeat for several; default: the configured default).")
@click.option("--name", default=None, help="Template name (default: 'template of <volume>').")
@click.option("--description", default=None)
@click.option("--mode", type=click.Choice(["copy", "clone", "flatten"]), default=None,
              help="How a Ceph backup storage gets the template.")
@click.option("--format", "image_format", type=click.Choice(["qcow2", "raw"]), default=None,
              help="File format on filesystem/SFTP backup storage.")
@click.option("--compression", type=click.Choice(["zstd", "zlib", "none"]), default=None,
              help="Compressed qcow2 on filesystem/SFTP backup storage (made by qemu-img).")
@click.option("--resource-uuid", default=None, help="The new image's uuid (default: a random one).")
@click.option("--account", "account_uuid", default=None, metavar="ACCOUNT_UUID",
              help="Make it as this account, which must own the volume and will own the image "
                   "(default: the admin account, which may use every volume).")
@click.option("--json", "as_json", is_flag=True, help="Print the ImageInventory as JSON on stdout.")
@config_option
def copy(volume_uuid: str, backup_storages: tuple[str, ...], name: str | None, description: str | None,
         mode: str | None, image_format: str | None, compression: str | None, resource_uuid: str | None,
         account_uuid: str | None, as_json: bool, config_path: str) -> None:
    """Make a template of VOLUME_UUID now, the way the HTTP call does, with live progress.

    Ctrl-C cancels cleanly: nothing is left on any storage, and the exit code is 130.

    \b
    Example:
      zsagent copy 0cd599ec519249489475112a058bb93a --to 1b8ab68b7e224a30aa31f00f1db2b5a6 --mode clone
    """
    from zsagent.jobs import Job
    from zsagent.logs import setup_logging
    from zsagent.request import parse_body
    from zsagent.service import ADMIN_ACCOUNT_UUID

    setup_logging("text", level=30)
    config = load_or_exit(config_path)
    params: dict[str, Any] = {"name": name if name is not None else f"template of {volume_uuid}",
                              "description": description}
    if backup_storages:
        params["backupStorageUuids"] = list(backup_storages)
    if resource_uuid:
        params["resourceUuid"] = resource_uuid
    chosen = {"ceph::copyMode": mode, "template::format": image_format, "template::compression": compression}
    tags = [f"{prefix}::{value}" for prefix, value in chosen.items() if value]
    try:
        request = parse_body({"params": params, "systemTags": tags}, volume_uuid)
    except ZsError as e:
        click.echo(f"zsagent: invalid request: {e.error.details}", err=True)
        sys.exit(EXIT_USAGE)
    service = open_service(config)
    job = Job()
    outcome: dict[str, Any] = {}
    # An Event, not Thread.join: a Ctrl-C that lands inside join() can make later joins return early.
    finished = threading.Event()

    def work() -> None:
        try:
            outcome["inventory"] = service.create_template(request, account_uuid or ADMIN_ACCOUNT_UUID, job)
        except BaseException as e:  # noqa: BLE001 - reported by the main thread
            outcome["error"] = e
        finally:
            finished.set()

    threading.Thread(target=work, name="copy", daemon=True).start()
    try:
        _show_progress(job, finished)
    except KeyboardInterrupt:
        signal.signal(signal.SIGINT, lambda *_: click.echo("zsagent: still cleaning up, please wait", err=True))
        job.cancel_with("interrupted (Ctrl-C)")
        click.echo("zsagent: cancelling; removing what was written ...", err=True)
        finished.wait()
        service.close()
        click.echo("zsagent: cancelled; nothing was left behind", err=True)
        sys.exit(EXIT_CANCELLED)
    service.close()
    if "error" in outcome:
        error = outcome["error"]
        if isinstance(error, ZsError) and error.error.code == errors.CANCELLED:
            click.echo(f"zsagent: {error.error.details}", err=True)
            sys.exit(EXIT_CANCELLED)
        fail(error, "copy")
    inventory = outcome["inventory"]
    if as_json:
        click.echo(json.dumps(inventory, indent=2))
        return
    click.echo(f"image {inventory['uuid']} ready: {inventory['size']} bytes, md5 {inventory['md5Sum']}")
    for ref in inventory["backupStorageRefs"]:
        click.echo(f"  {ref['backupStorageUuid']}: {ref['installPath']} (md5 {ref['exportMd5Sum']})")


def _show_progress(job, finished: threading.Event) -> None:
    """A live bar on a terminal; otherwise a plain line every few seconds."""
    if sys.stderr.isatty():
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        columns = (TextColumn("{task.description:<10}"), BarColumn(), DownloadColumn(binary_units=True),
                   TransferSpeedColumn(), TimeRemainingColumn())
        with Progress(*columns, transient=False) as bar:
            task = bar.add_task("queued", total=None)
            while not finished.is_set():
                p = job  # phase, bytes_done, bytes_total, percent
                bar.update(task, description=p.phase, completed=p.bytes_done, total=p.bytes_total or None)
                finished.wait(0.2)
            p = job  # phase, bytes_done, bytes_total, percent
            bar.update(task, description=p.phase, completed=p.bytes_done, total=p.bytes_total or None)
        return
    last_line, last_time = "", 0.0
    started = time.monotonic()
    while True:
        p = job  # phase, bytes_done, bytes_total, percent
        elapsed = max(time.monotonic() - started, 1e-6)
        line = (f"{p.phase}: {p.bytes_done}/{p.bytes_total} bytes ({p.percent}%), "
                f"{p.bytes_done / elapsed / 1e6:.0f} MB/s")
        now = time.monotonic()
        if line != last_line and (now - last_time >= 2 or p.phase != last_line.split(":")[0]):
            click.echo(line, err=True)
            last_line, last_time = line, now
        if finished.wait(0.2):
            break


@main.group()
def images() -> None:
    """Templates this agent made (its records).

    \b
    Example:
      zsagent images list
    """


@images.command("list")
@config_option
@click.option("--account", "account_uuid", default=None, metavar="ACCOUNT_UUID",
              help="Only what this account sees (its own images; all of them for the admin account).")
@click.option("--json", "as_json", is_flag=True, help="The ImageInventories as JSON.")
def images_list(config_path: str, account_uuid: str | None, as_json: bool) -> None:
    """List the templates (all of them: the operator's view, unless --account).

    \b
    Example:
      zsagent images list --json
    """
    service = open_service(load_or_exit(config_path))
    inventories = service.list_images(account_uuid)
    if as_json:
        click.echo(json.dumps(inventories, indent=2))
        return
    for inv in inventories:
        paths = ", ".join(r["installPath"] for r in inv["backupStorageRefs"])
        click.echo(f"{inv['uuid']}  {inv['size']:>14}  {inv['md5Sum']}  {inv['name']!r}  {paths}")


@images.command("show")
@click.argument("image_uuid")
@config_option
def images_show(image_uuid: str, config_path: str) -> None:
    """Print one template's ImageInventory as JSON.

    \b
    Example:
      zsagent images show 7247cf569e2b4104832071822cf845c5
    """
    service = open_service(load_or_exit(config_path))
    try:
        click.echo(json.dumps(service.get_image(image_uuid), indent=2))
    except ZsError as e:
        fail(e, "show")


@images.command("delete")
@click.argument("image_uuid")
@config_option
def images_delete(image_uuid: str, config_path: str) -> None:
    """Delete a template from every backup storage, and its record.

    \b
    Example:
      zsagent images delete 7247cf569e2b4104832071822cf845c5
    """
    service = open_service(load_or_exit(config_path))
    try:
        service.delete_image(image_uuid)
    except ZsError as e:
        fail(e, "delete")
    finally:
        service.close()
    click.echo(f"image {image_uuid} deleted")


@main.command()
@config_option
@click.option("--json", "as_json", is_flag=True)
def volumes(config_path: str, as_json: bool) -> None:
    """List the volumes the configured primary storages hold.

    \b
    Example:
      zsagent volumes
    """
    service = open_service(load_or_exit(config_path))
    try:
        found = service.catalog.volumes()
    except ZsError as e:
        fail(e, "listing volumes")
    finally:
        service.close()
    rows = [{"uuid": v.uuid, "kind": v.kind, "format": v.format, "size": v.size,
             "where": f"{v.pool}/{v.image}" if v.kind == "ceph" else v.path} for v in found]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for row in rows:
        click.echo(f"{row['uuid']}  {row['kind']:<4}  {row['format']:<5}  {row['size']:>14}  {row['where']}")


@main.command()
@config_option
def check(config_path: str) -> None:
    """Check the configuration and everything it points at; exit 1 on any problem.

    \b
    Example:
      zsagent check --config /etc/zsagent/zsagent.toml
    """
    from zsagent.checks import run_checks

    try:
        config = load_config(config_path)
    except ConfigError as e:
        click.echo(f"problem: {e}\n  fix: correct that key (see /usr/share/doc/zsagent/zsagent.toml.example)")
        sys.exit(EXIT_FAILED)
    problems = 0
    for ok, what, fix in run_checks(config):
        if ok and fix:
            click.echo(f"warning: {what}\n  fix: {fix}")
        elif ok:
            click.echo(f"ok: {what}")
        else:
            problems += 1
            click.echo(f"problem: {what}\n  fix: {fix}")
    if problems:
        click.echo(f"{problems} problem(s) found", err=True)
        sys.exit(EXIT_FAILED)
    click.echo("all checks passed")
