"""Pool registry commands (`poolwatch pools import|validate|diff|list|suggest|families`) and `poolwatch attribute`."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import click
from rich.console import Console
from rich.text import Text

from pipeline.cli.output import (Column, fail, output_format, output_options, print_csv, print_json, print_table,
                                 stdout)

out = Console()
err = Console(stderr=True)


def _fail(message: str) -> None:
    fail(message)  # verbatim: messages name files and JSON paths like pools[3]


def _load(path: Path | None):
    from pipeline.attribution.registry import RegistryError, load_registry

    try:
        return load_registry(path)
    except RegistryError as exc:
        _fail(str(exc))


def _warehouse(ctx: click.Context):
    from pipeline.store.warehouse import Warehouse

    return Warehouse(ctx.obj["warehouse"])


def _has_data(warehouse) -> bool:
    return warehouse.table_dir("blocks").is_dir() and warehouse.stored_range() is not None


def _resolve_registry(ctx: click.Context, ref: str):
    """A registry file path, or a version hash stored in the warehouse's pool_definitions."""
    path = Path(ref)
    if path.exists():
        return _load(path)
    from pipeline.attribution.engine import registry_from_definitions
    from pipeline.attribution.registry import RegistryError

    warehouse = _warehouse(ctx)
    if not warehouse.table_dir("pool_definitions").is_dir():
        _fail(f"{ref!r} is neither a registry file nor a version stored in warehouse {warehouse.root}")
    try:
        return registry_from_definitions(warehouse.read("pool_definitions", where=f"registry_version = '{_sql(ref)}'"),
                                         ref)
    except RegistryError as exc:
        _fail(f"{ref!r} is not a registry file, and {exc}")


def _sql(text: str) -> str:
    return text.replace("'", "''")


@click.group()
def pools() -> None:
    """The pool registry: import community lists, validate, list, diff, suggest new entries, families."""


@pools.command("import")
@click.option("--from", "sources", nargs=2, multiple=True, metavar="KIND PATH",
              help="A list to import; KIND is mempool-v2, v1, bitcoin-data (a folder) or legal-links "
                   "(consensus-decentralization's legal_links.json: dated families). Repeatable; "
                   "earlier lists win disagreements unless --rules says otherwise.")
@click.option("--default-sources", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="Import the default set from a pool-lists folder (../shared/pool-lists) with the shipped rules.")
@click.option("--rules", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Resolution rules JSON (default with --default-sources: pipeline/data/registry_rules.json).")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Registry file to write.")
def import_(sources, default_sources, rules, output) -> None:
    """Merge pool lists into a registry, reporting every disagreement and how it was resolved."""
    from pipeline.attribution import importers
    from pipeline.attribution.registry import RegistryError, parse_registry

    if not sources and default_sources is None:
        raise click.UsageError("give --from KIND PATH (repeatable) or --default-sources FOLDER")
    try:
        if default_sources is not None and not sources:
            document, disagreements = importers.build_default(default_sources, rules)
        else:
            read = []
            for i, (kind, path) in enumerate(sources):
                source_id = kind if all(k != kind for k, _ in sources[:i]) else f"{kind}-{i + 1}"
                read.append(importers.read_source(kind, Path(path), source_id))
            document, disagreements = importers.merge_sources(read, importers.load_rules(rules) if rules else None)
            parse_registry(document)
    except (importers.SourceListError, RegistryError) as exc:
        _fail(str(exc))
    importers.write_registry(document, output)
    _print_disagreements(disagreements)
    registry = parse_registry(document)
    out.print(Text(f"wrote {output}: {len(registry.pools)} pools, {sum(len(p.tags) for p in registry.pools)} tags, "
                   f"{sum(len(p.addresses) for p in registry.pools)} addresses, {len(disagreements)} disagreements "
                   f"resolved (listed in the file's 'resolutions'); version {registry.version}"))


def _print_disagreements(disagreements) -> None:
    """One line per disagreement (plain text: these lines end up in logs and CI output)."""
    if disagreements:
        out.print(f"{len(disagreements)} disagreement(s) between the lists:")
    for d in disagreements:
        claims = "; ".join(f"{pid} <- {', '.join(srcs)}" for pid, srcs in d.claims.items())
        out.print(f"  {d.kind}: {d.subject} [{claims}] => {d.decision} (rule {d.rule})",
                  markup=False, highlight=False, soft_wrap=True)


@pools.command()
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
def validate(file) -> None:
    """Check a registry file; errors name the entry and the field, and exit non-zero."""
    registry = _load(file)
    out.print(Text(f"{file}: valid, {len(registry.pools)} pools, version {registry.version}"))


@pools.command("list")
@click.option("--registry", "registry_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Registry file (default: the shipped registry).")
@click.option("--search", default=None, help="Only pools whose id, name, tag or address contains this text.")
@output_options(csv_help="Print one CSV line per pool (tags, address counts and families as JSON) instead of a table.",
                json_help="Print the pools as a JSON list instead of a table.")
def list_(registry_path, search, as_csv, as_json) -> None:
    """Show the pools of a registry: every tag, the number of payout addresses per network, families.

    In a terminal too narrow for the table, one field per line."""
    registry = _load(registry_path)
    needle = (search or "").lower()
    rows = []
    for p in sorted(registry.pools, key=lambda p: p.id):
        texts = [p.id, p.name] + [t.text for t in p.tags] + [a.address for a in p.addresses]
        if needle and not any(needle in t.lower() for t in texts):
            continue
        rows.append({"id": p.id, "name": p.name, "tags": [t.text for t in p.tags],
                     "addresses": dict(sorted(Counter(a.network for a in p.addresses).items())),
                     "family": [m.family for m in p.family], "link": p.link or ""})
    fmt = output_format(as_csv, as_json)
    if fmt == "json":
        print_json(rows)
        return
    if fmt == "csv":
        print_csv(["id", "name", "tags", "addresses", "family", "link"], rows)
        return
    columns = [Column("id"), Column("name"), Column("tags", wrap=True), Column("addresses"), Column("family"),
               Column("link", optional=True)]
    print_table(columns, [[r["id"], r["name"], r["tags"], " ".join(f"{n} {k}" for k, n in r["addresses"].items()),
                           r["family"], r["link"]] for r in rows], title=f"registry {registry.version}")
    out.print(f"{len(rows)} of {len(registry.pools)} pools")


@pools.command()
@click.argument("old")
@click.argument("new")
@click.option("--limit", type=click.IntRange(min=0), default=20, show_default=True,
              help="Changed blocks to list individually.")
@output_options(csv_help="Print the pool changes (from,to,blocks) as CSV instead of the report.",
                json_help="Print the whole comparison as JSON: versions, rule changes, pool changes and the first "
                          "--limit changed blocks.")
def diff(old, new, limit, as_csv, as_json) -> None:
    """Compare two registries (files or stored versions): rule changes, and with a warehouse, which
    stored blocks change pool."""
    from pipeline.attribution.registry import diff_registries

    ctx = click.get_current_context()
    fmt = output_format(as_csv, as_json)
    a, b = _resolve_registry(ctx, old), _resolve_registry(ctx, new)
    changes = diff_registries(a, b)
    warehouse = _warehouse(ctx)
    changed = None
    if _has_data(warehouse):
        from pipeline.attribution.engine import AttributionSettings, block_changes, recorded_settings

        chain = warehouse.meta.get("chain", "main")
        cross = (recorded_settings(warehouse.meta) or AttributionSettings()).cross_network
        changed = block_changes(warehouse, a, b, chain, allow_cross_network=cross)
    pairs = Counter(zip(changed["old_pool_id"].to_pylist(), changed["new_pool_id"].to_pylist())) if changed else Counter()
    pair_rows = [{"from": x, "to": y, "blocks": n} for (x, y), n in pairs.most_common()]
    blocks = changed.slice(0, limit).to_pylist() if changed is not None else []
    if fmt == "json":
        print_json({"old_version": a.version, "new_version": b.version, "pools": changes["pools"],
                    "rules": changes["rules"], "blocks_changed": None if changed is None else changed.num_rows,
                    "pool_changes": pair_rows, "changed_blocks": blocks})
        return
    if fmt == "csv":
        print_csv(["from", "to", "blocks"], pair_rows)
        return
    out.print(Text(f"registry {a.version} -> {b.version}"))
    for line in changes["pools"] + changes["rules"]:
        out.print("  " + line, highlight=False, markup=False)
    if not changes["pools"] and not changes["rules"]:
        out.print("  no rule changes")
    if changed is None:
        out.print("(no stored blocks: block-level changes need a warehouse, see --warehouse)")
        return
    out.print(f"{changed.num_rows:,} stored blocks change pool")
    if changed.num_rows:
        print_table([Column("from"), Column("to"), Column("blocks", "right")],
                    [[r["from"], r["to"], f"{r['blocks']:,}"] for r in pair_rows], title="pool changes", console=stdout())
        for row in blocks:
            out.print(f"  {row['height']}: {row['old_pool_id']} -> {row['new_pool_id']} ({row['new_rule']})",
                      highlight=False, markup=False)


@pools.command()
@click.option("--registry", "registry_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Registry whose unknown blocks to study (default: the shipped registry).")
@click.option("--min-blocks", type=click.IntRange(min=1), default=3, show_default=True,
              help="Evidence needed for a proposal.")
@output_options(csv_help="Print one CSV line per proposal (tags and addresses as JSON lists) instead of a table.",
                json_help="Print the proposals as registry entries (JSON), with their evidence.")
def suggest(registry_path, min_blocks, as_csv, as_json) -> None:
    """Propose registry entries from recurring tags and payout addresses of unknown blocks."""
    from pipeline.attribution.engine import suggest_from_warehouse

    ctx = click.get_current_context()
    warehouse = _warehouse(ctx)
    if not _has_data(warehouse):
        _fail(f"no stored blocks in warehouse {warehouse.root}; run `poolwatch sync` first")
    registry = _load(registry_path)
    proposals = suggest_from_warehouse(warehouse, registry, min_blocks=min_blocks)
    if as_json:
        click.echo(json.dumps(proposals, indent=1, ensure_ascii=False))
        return
    rows = [{"id": p["id"], "tags": [t["tag"] for t in p["tags"]], "addresses": [a["address"] for a in p["addresses"]],
             "blocks": p["evidence"]["blocks"], "first_height": p["evidence"]["first_height"],
             "last_height": p["evidence"]["last_height"]} for p in proposals]
    if as_csv:
        print_csv(["id", "tags", "addresses", "blocks", "first_height", "last_height"], rows)
        return
    if not proposals:
        out.print(f"no recurring tag or address among unknown blocks (min {min_blocks} blocks)")
        return
    columns = [Column("proposed id"), Column("tags", wrap=True), Column("addresses", wrap=True),
               Column("blocks", "right"), Column("first", "right"), Column("last", "right")]
    print_table(columns, [[r["id"], r["tags"], r["addresses"], f"{r['blocks']:,}", str(r["first_height"]),
                           str(r["last_height"])] for r in rows],
                title=f"proposed entries (registry {registry.version})")


@pools.command("families")
@click.option("--registry", "registry_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Registry file (default: the warehouse's current registry; the shipped one without a warehouse).")
@click.option("--suggest", is_flag=True,
              help="Propose registry rules (families and memberships, the format of pipeline/data/"
                   "registry_rules.json) from the inferred links that reach the thresholds, for a person to accept.")
@click.option("--min-template-heights", type=click.IntRange(min=1), default=None,
              help="Threshold for template links (default: the warehouse's recorded metrics setting, else 2).")
@click.option("--min-co-spends", type=click.IntRange(min=1), default=None,
              help="Threshold for custody links (default: the warehouse's recorded metrics setting, else 2).")
@output_options(csv_help="Print one CSV line per link instead of tables.",
                json_help="Print {registry_version, inference, families, links} (with --suggest: the proposed "
                          "rules) as JSON.")
def families(registry_path, suggest, min_template_heights, min_co_spends, as_csv, as_json) -> None:
    """Every family and link behind the legal and inferred levels, with its evidence.

    Legal links: the registry's dated family memberships with the source link of each ownership
    link. Inferred links (with a warehouse): template_links (shared block templates: observations)
    and custody_links (coinbase outputs spent together: co-spend counts), each marked whether it
    reaches the thresholds the metrics count it at. docs/metrics.md, "Levels"."""
    from pipeline.cli.metrics import inference_options
    from pipeline.metrics import families as fam

    ctx = click.get_current_context()
    warehouse = _warehouse(ctx)
    has_warehouse = (warehouse.root / "meta.json").is_file()
    links: list = []
    state = {table: "absent" for table in fam.LINK_TABLES}
    registry = _load(registry_path) if registry_path is not None else None
    if has_warehouse:
        settings = inference_options(warehouse, min_template_heights, min_co_spends)
        con = warehouse.connect()
        try:
            links, state = fam.read_links(con)
            if registry is None:
                registry = fam.registry_for_version(con, warehouse.attribution_version)
        except fam.FamiliesError as exc:
            _fail(str(exc))
        finally:
            con.close()
    else:
        settings = fam.InferenceSettings(**{k: v for k, v in (("min_template_heights", min_template_heights),
                                                               ("min_co_spend_txs", min_co_spends)) if v is not None})
    if registry is None:
        registry = _load(None)
    fmt = output_format(as_csv, as_json)
    if suggest:
        proposal = fam.suggest_memberships(registry, links, settings)
        if fmt == "json":
            print_json({"registry_version": registry.version, "inference": settings.to_meta(), **proposal})
            return
        if fmt == "csv":
            print_csv(["pool", "family", "from_height", "note"], proposal["memberships"])
            return
        if not proposal["memberships"]:
            out.print(Text(f"no link to suggest: no inferred link between registry pools reaches the thresholds "
                           f"({settings.describe()}) outside the families they already have"))
            return
        out.print(Text(f"Suggested rules ({settings.describe()}); add what you accept to the 'families' and "
                       "'memberships' of a rules file (pipeline/data/registry_rules.json) and re-import:",
                       style="bold"))
        click.echo(json.dumps(proposal, indent=1, ensure_ascii=False))
        return
    rows = fam.family_link_rows(registry, links, settings)
    members: dict[str, list[str]] = {}
    for row in rows:
        if row["level"] == "legal":
            members.setdefault(row["entity"], [])
            if row["pool_a"] not in members[row["entity"]]:
                members[row["entity"]].append(row["pool_a"])
    family_rows = [{"entity": fam.FAMILY_PREFIX + f.id, "name": f.name, "pools": members.get(fam.FAMILY_PREFIX + f.id, [])}
                   for f in sorted(registry.families, key=lambda f: f.id)]
    if fmt == "json":
        print_json({"registry_version": registry.version, "inference": settings.to_meta(), "tables": state,
                    "families": family_rows, "links": rows})
        return
    if fmt == "csv":
        print_csv(["level", "kind", "entity", "entity_name", "pool_a", "pool_b", "when", "sources", "evidence",
                   "counted"], rows)
        return
    print_table([Column("family"), Column("name"), Column("pools (at any time)", wrap=True)],
                [[r["entity"], r["name"], r["pools"]] for r in family_rows],
                title=f"families of registry {registry.version}")
    out.print()
    print_table([Column("family"), Column("pool"), Column("when"), Column("evidence (source links)", wrap=True)],
                [[r["entity"], r["pool_a"], r["when"], r["evidence"]] for r in rows if r["level"] == "legal"],
                title="legal links (the legal level)")
    out.print()
    inferred = [r for r in rows if r["level"] == "inferred"]
    if inferred:
        print_table([Column("kind"), Column("pools"), Column("heights"), Column("evidence", wrap=True),
                     Column("counted")],
                    [[r["kind"], f"{r['pool_a']} + {r['pool_b']}", r["when"].removeprefix("heights "), r["evidence"],
                      "yes" if r["counted"] else "no (below threshold)"] for r in inferred],
                    title=f"inferred links (the inferred level; counted: {settings.describe()})")
    else:
        what = ", ".join(f"{t} {s}" for t, s in sorted(state.items()))
        out.print(Text(f"no inferred links ({what}): the inferred level equals the legal level"))


@click.command()
@click.option("--registry", "registry_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Registry file (default: the warehouse's current registry; the shipped one for a new warehouse).")
@click.option("--cross-network-registry/--no-cross-network-registry", "cross_network_registry", default=None,
              help="On a regtest warehouse, let the registry's mainnet addresses match (demo and tests). Default: "
                   "the warehouse's recorded setting.")
@click.option("--change-settings", is_flag=True,
              help="Confirm a change of a recorded attribution setting (results change).")
@click.option("--again", is_flag=True,
              help="Attribute every stored block again even when its rows are current (same registry, settings "
                   "and engine rules: the same rows are rewritten; minutes at mainnet height).")
@click.option("--no-validate", is_flag=True, help="Skip the Great Expectations gate.")
@click.option("--wait", type=click.FloatRange(min=0), default=0.0, show_default=True,
              help="Seconds to wait for another writer.")
@click.option("--no-metrics", is_flag=True, help="Do not recompute the stored metric tables (they are marked stale).")
@click.pass_context
def attribute(ctx, registry_path, cross_network_registry, change_settings, again, no_validate, wait,
              no_metrics) -> None:
    """Re-attribute all stored blocks from their stored coinbases (no node needed).

    Results are kept per attribution version (registry version + settings); the warehouse's current
    version becomes this one. Settings the warehouse recorded are kept unless changed explicitly.
    When the version is already current and every stored block has its row, nothing is done
    (--again does it anyway)."""
    from pipeline.attribution.engine import attribution_version
    from pipeline.cli.progress import progress_bar
    from pipeline.load.jobs import RegistryChoice, reattribute

    explicit = _load(registry_path) if registry_path is not None else None
    warehouse = _warehouse(ctx)
    stored = warehouse.stored_range() if warehouse.table_dir("blocks").is_dir() else None
    if stored is None:
        _fail(f"no stored blocks in warehouse {warehouse.root}; run `poolwatch sync` first")
    choice = RegistryChoice(explicit, cross_network_registry, default=lambda: _load(None),
                            change_settings=change_settings)
    try:
        with warehouse.writer(wait=wait):
            before = warehouse.attribution_version
            registry, cross = choice.resolve(warehouse)
            stats: dict[str, int] = {}
            with progress_bar("attribute", total=stored[1] - stored[0] + 1) as advance:
                done = reattribute(warehouse, registry, allow_cross_network=cross, validate=not no_validate,
                                   progress=advance, stats=stats, again=again)
            warehouse.refresh_catalog()
    except (ValueError, RuntimeError) as exc:
        _fail(str(exc))
    version = attribution_version(registry.version, cross)
    if stats.get("current"):
        out.print(Text(f"attributions are current: every one of the {stats['current']:,} stored blocks has its row "
                       f"under attribution version {version}; nothing attributed again (the same registry, "
                       "settings and engine rules give the same rows)"))
    else:
        change = "unchanged" if before == version else f"was {before}"
        matched = stats.get("attributed_again", done)
        how = "" if matched == done else \
            f" ({matched:,} matched again, {done - matched:,} unchanged by the registry's changes)"
        out.print(Text(f"attributed {done:,} stored blocks{how}: attribution version {version} ({change})"))
    # Also when nothing was attributed: metrics a run with --no-metrics left stale are brought up to date.
    if not no_metrics:
        from pipeline.cli.core import update_metrics

        update_metrics(warehouse, wait=wait)


def register(main: click.Group) -> None:
    main.add_command(pools)
    main.add_command(attribute)
