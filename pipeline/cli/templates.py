"""Shared block templates from stratum captures: `poolwatch templates import`."""

from __future__ import annotations

from pathlib import Path

import click
from rich.text import Text

from pipeline.cli.output import Column, fail, output_format, output_options, print_csv, print_json, print_table, \
    stdout


@click.group()
def templates() -> None:
    """Shared block templates: which pools hand out identical merkle branches (docs/templates.md)."""


@templates.command("import")
@click.argument("file", type=click.Path(path_type=Path))
@click.option("--warehouse", "warehouse_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Warehouse folder (default: the one given before the command, $POOLWATCH_WAREHOUSE or "
                   "./warehouse).")
@click.option("--format", "fmt", type=click.Choice(["auto", "mempool", "jsonl"]), default="auto", show_default=True,
              help="Capture format: mempool's websocket document ({\"stratumJobs\": ...}) or JSON lines (one job "
                   "per line, docs/templates.md); auto tells them apart.")
@click.option("--registry", "registry_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Registry that resolves pool names (default: the warehouse's current registry; the shipped one "
                   "for a warehouse without one).")
@click.option("--mempool-list", "mempool_list", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="mempool's pools-v2.json, which turns mempool's pool ids into names (default: the list the "
                   "registry was imported from, under ../shared/pool-lists or $POOLWATCH_SHARED/pool-lists).")
@click.option("--strict-pools", is_flag=True,
              help="Refuse the capture if a pool resolves to no registry pool (default: keep it as "
                   "'unmapped:<name>' and say so).")
@click.option("--no-validate", is_flag=True, help="Skip the Great Expectations gate.")
@click.option("--wait", type=click.FloatRange(min=0), default=0.0, show_default=True,
              help="Seconds to wait for another writer.")
@output_options(csv_help="Print the capture's shared groups (group_id, height, pools) as CSV instead of the report.",
                json_help="Print the whole import report as JSON.")
@click.pass_context
def import_(ctx, file, warehouse_dir, fmt, registry_path, mempool_list, strict_pools, no_validate, wait,
            as_csv, as_json) -> None:
    """Import a stratum capture FILE: its jobs into template_observations, then template_groups and
    template_links recomputed from every stored job. Importing a file again adds nothing."""
    from pipeline.attribution.templates import CaptureError, read_capture
    from pipeline.load.templates import import_templates
    from pipeline.store.validation import BatchRejected
    from pipeline.store.warehouse import Warehouse, WarehouseError

    mode = output_format(as_csv, as_json)
    warehouse = Warehouse(warehouse_dir or ctx.obj["warehouse"])
    try:
        # Everything that can be wrong with the arguments, before the warehouse is touched.
        capture = read_capture(file, fmt)
        registry = _registry(warehouse, registry_path)
        pool_list = _mempool_list(registry, mempool_list) if capture.mempool_ids else None
        result = import_templates(warehouse, capture, registry, mempool_list=pool_list, strict_pools=strict_pools,
                                  validate=not no_validate, wait=wait)
    except (CaptureError, BatchRejected, WarehouseError, ValueError) as exc:
        fail(exc)  # verbatim: messages name files, lines, fields and JSON paths
    if mode == "json":
        print_json(result.to_dict())
        return
    if mode == "csv":
        print_csv(["group_id", "height", "pools", "pool_ids"],
                  [{**g, "pools": len(g["pool_ids"])} for g in result.shared])
        return
    out = stdout()
    matched = ", ".join(f"{n} by {kind}" for kind, n in result.pool_matches.items())
    out.print(Text(f"read {result.jobs:,} jobs from {result.capture} ({result.format} format)"))
    out.print(Text(f"  sha256 {result.sha256}"))
    if result.repeated:
        out.print(Text(f"  {result.repeated:,} of them repeat an earlier job of the file and are stored once"))
    out.print(Text(f"pools: {matched} (registry {result.registry_version})"))
    for ref, why in result.unmapped.items():
        out.print(Text.assemble(("  unmapped: ", "yellow"), f"{ref!r} kept as 'unmapped:{ref}': {why}"))
    out.print(Text(f"stored {result.new:,} new observations ({result.replaced:,} already stored); "
                   f"{result.observations:,} in all"))
    out.print(Text(f"template groups: {result.groups:,} ({result.shared_groups:,} shared by several pools); "
                   f"links: {result.links:,}"))
    if result.shared:
        print_table([Column("height", "right"), Column("group"), Column("pools", "right"),
                     Column("pool ids", wrap=True)],
                    [[str(g["height"]), g["group_id"], str(len(g["pool_ids"])), g["pool_ids"]] for g in result.shared],
                    title="shared templates in this capture", console=out)


def _registry(warehouse, path: Path | None):
    from pipeline.attribution.registry import load_registry
    from pipeline.load.jobs import current_registry

    if path is not None:
        return load_registry(path)
    if warehouse.meta_path.exists():
        current = current_registry(warehouse)
        if current is not None:
            return current
    return load_registry(None)


def _mempool_list(registry, path: Path | None):
    from pipeline.attribution.importers import default_lists_dir
    from pipeline.attribution.templates import CaptureError, default_mempool_list_path, read_mempool_pool_list

    if path is not None:
        return read_mempool_pool_list(path)
    default = default_mempool_list_path(registry, default_lists_dir())
    if not default.exists():
        raise CaptureError(f"the capture names pools by their id in mempool's pool list, which is not at {default}: "
                           "give it with --mempool-list pools-v2.json (github.com/mempool/mining-pools)")
    return read_mempool_pool_list(default)


def register(main: click.Group) -> None:
    main.add_command(templates)
