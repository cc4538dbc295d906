"""The three levels the metrics count at: pools as reported, legal families, inferred groups.

- ``pool``: the registry pool each block is attributed to.
- ``legal``: pools joined by the registry's dated families (``attributions.family``, from the
  imported legal links): a pool in a family at a block's time counts as that family.
- ``inferred``: the legal entities further joined by inferred links whose evidence reaches the
  thresholds of ``InferenceSettings``: shared block templates (table ``template_links``) and
  coinbase outputs spent in one transaction (table ``custody_links``). Grouping is transitive
  (connected components) and includes the legal families: a link from a pool joins the family that
  pool belongs to at the block's time.

Entity ids live in separate namespaces that cannot collide: registry pool ids (``antpool``; they
never contain ``:``), ``family:<family id>`` and ``group:<lead entity>``; ``unknown`` as before.
Worked examples: docs/metrics.md, "Levels".
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import duckdb

    from pipeline.attribution.registry import FamilyMembership, Pool, Registry

LEVELS = ("pool", "legal", "inferred")
FAMILY_PREFIX = "family:"
GROUP_PREFIX = "group:"
UNKNOWN_ID = "unknown"
LINK_TABLES = ("template_links", "custody_links")
# Columns the metrics read from each evidence table (the contract with their writers).
LINK_COLUMNS = {
    "template_links": ("pool_a", "pool_b", "shared_groups", "heights_seen", "first_height", "last_height"),
    "custody_links": ("pool_a", "pool_b", "co_spend_txs", "first_height", "last_height"),
}


class FamiliesError(RuntimeError):
    """Evidence tables or the registry behind the levels cannot be used (the message names them)."""


@dataclass(frozen=True)
class InferenceSettings:
    """How much evidence makes an inferred link: a setting of the metrics (it changes their
    results), recorded in the warehouse's meta.json with the metric tables it produced.

    ``min_template_heights``: a template link counts when the two pools were seen publishing
    identical templates at this many distinct heights (``heights_seen``). ``min_co_spend_txs``: a
    custody link counts when this many transactions spent coinbase outputs of both pools. The
    default 2 asks for a repeat: one identical small template, or one transaction that happens to
    gather two pools' outputs (a coinjoin, an exchange's sweep), can be a coincidence; the same
    coincidence twice is far less likely (docs/metrics.md, "Levels")."""

    min_template_heights: int = 2
    min_co_spend_txs: int = 2

    def __post_init__(self) -> None:
        for name in ("min_template_heights", "min_co_spend_txs"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")

    def to_meta(self) -> dict[str, int]:
        return asdict(self)

    @classmethod
    def from_meta(cls, meta: Mapping[str, Any]) -> InferenceSettings:
        """The settings a warehouse recorded with its metric tables (``metrics_settings``), else the
        defaults."""
        recorded = meta.get("metrics_settings") or {}
        return cls(**{k: int(v) for k, v in recorded.items() if k in cls.__dataclass_fields__})

    def describe(self) -> str:
        return (f"template links seen at >= {self.min_template_heights} heights, custody links with >= "
                f"{self.min_co_spend_txs} co-spending transactions")


@dataclass(frozen=True)
class InferredLink:
    """One row of template_links or custody_links."""

    kind: str                 # template | custody
    pool_a: str
    pool_b: str
    strength: int             # heights_seen (template) or co_spend_txs (custody): what the threshold reads
    evidence: tuple[tuple[str, int], ...]  # every count of the row, for display
    first_height: int
    last_height: int

    def counts(self, settings: InferenceSettings) -> bool:
        need = settings.min_template_heights if self.kind == "template" else settings.min_co_spend_txs
        return self.strength >= need

    def describe(self) -> str:
        counts = ", ".join(f"{k} {v:,}" for k, v in self.evidence)
        return f"{counts}, heights {self.first_height}..{self.last_height}"


def present_tables(con: duckdb.DuckDBPyConnection) -> set[str]:
    rows = con.execute("SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()")
    return {r[0] for r in rows.fetchall()}


def read_links(con: duckdb.DuckDBPyConnection) -> tuple[list[InferredLink], dict[str, str]]:
    """Every row of the evidence tables, and per table a state: ``absent``, ``empty`` or ``rows``.

    The tables are written by other stages (stratum template import, the load loop's coinbase
    spends); a table that lacks a column the contract names is an error, not an empty table."""
    present = present_tables(con)
    links: list[InferredLink] = []
    state: dict[str, str] = {}
    for table in LINK_TABLES:
        if table not in present:
            state[table] = "absent"
            continue
        columns = LINK_COLUMNS[table]
        have = {r[0] for r in con.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_name = ?", [table]).fetchall()}
        missing = [c for c in columns if c not in have]
        if missing:
            raise FamiliesError(f"table {table} has no column(s) {', '.join(missing)}: the family levels read "
                                f"{', '.join(columns)}")
        casts = ", ".join(f"{c}::VARCHAR" if c.startswith("pool_") else f"{c}::BIGINT" for c in columns)
        rows = con.execute(f"SELECT {casts} FROM {table} ORDER BY pool_a, pool_b").fetchall()
        state[table] = "rows" if rows else "empty"
        for row in rows:
            values = dict(zip(columns, row, strict=True))
            if values["pool_a"] is None or values["pool_b"] is None or values["pool_a"] == values["pool_b"]:
                continue  # no pair: nothing to join
            counts = tuple((c, int(values[c] or 0)) for c in columns[2:-2])
            if table == "template_links":
                links.append(InferredLink("template", values["pool_a"], values["pool_b"],
                                          int(values["heights_seen"] or 0), counts,
                                          int(values["first_height"]), int(values["last_height"])))
            else:
                links.append(InferredLink("custody", values["pool_a"], values["pool_b"],
                                          int(values["co_spend_txs"] or 0), counts,
                                          int(values["first_height"]), int(values["last_height"])))
    return links, state


def counted(links: Iterable[InferredLink], settings: InferenceSettings) -> list[InferredLink]:
    return [link for link in links if link.counts(settings)]


def inputs_fingerprint(links: Iterable[InferredLink], settings: InferenceSettings) -> str:
    """What the inferred level depends on besides the blocks and the registry: the settings and
    the pairs that reach them (16 hex digits of SHA-256). Equal fingerprints give equal groups."""
    pairs = sorted({(link.kind, link.pool_a, link.pool_b) for link in counted(links, settings)})
    text = json.dumps({"settings": settings.to_meta(), "pairs": pairs}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def notes(links: list[InferredLink], state: Mapping[str, str], settings: InferenceSettings) -> list[str]:
    """What a reader of the inferred level must know: the evidence it rests on, or that it has none
    and equals the legal level."""
    if all(s != "rows" for s in state.values()):
        what = {"absent": "no {} table", "empty": "an empty {} table"}
        return ["the inferred level equals the legal level: no inferred evidence ("
                + ", ".join(what[s].format(t) for t, s in sorted(state.items())) + ")"]
    used = counted(links, settings)
    if not used:
        return [f"the inferred level equals the legal level: none of the {len(links)} inferred link(s) reaches the "
                f"threshold ({settings.describe()})"]
    kinds = defaultdict(int)
    for link in used:
        kinds[link.kind] += 1
    absent = [t for t, s in sorted(state.items()) if s == "absent"]
    return [f"the inferred level joins pools by {kinds['template']} template link(s) and {kinds['custody']} custody "
            f"link(s) at or above the threshold ({settings.describe()}); {len(links) - len(used)} below it"
            + (f"; no {' or '.join(absent)} table" if absent else "")]


# ------------------------------------------------------------------------------------------------ SQL


def _sql_str(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def membership_condition(m: FamilyMembership, height: str = "b.height", time: str = "b_epoch") -> str:
    """SQL that is true for a block inside the membership's window (the engine's rule: heights and
    header times inclusive)."""
    parts = []
    if m.heights.from_height is not None:
        parts.append(f"{height} >= {int(m.heights.from_height)}")
    if m.heights.to_height is not None:
        parts.append(f"{height} <= {int(m.heights.to_height)}")
    if m.times.from_time is not None:
        parts.append(f"{time} >= {int(m.times.from_time)}")
    if m.times.to_time is not None:
        parts.append(f"{time} <= {int(m.times.to_time)}")
    return " AND ".join(parts) or "TRUE"


def legal_entity_sql(pool: Pool) -> str:
    """SQL for the legal entity of ``pool`` at the block in scope: its family then, else itself."""
    if not pool.family:
        return _sql_str(pool.id)
    whens = " ".join(f"WHEN {membership_condition(m)} THEN {_sql_str(FAMILY_PREFIX + m.family)}" for m in pool.family)
    return f"CASE {whens} ELSE {_sql_str(pool.id)} END"


def era_sql(registry: Registry | None, links: Iterable[InferredLink]) -> tuple[str, tuple[str, ...]]:
    """(SQL expression, pools): the legal entity of every linked pool whose family changes with the
    block, joined by '|' in the order of ``pools``. Blocks with the same value see the same graph
    (the same families on both ends of every link), so groups are computed once per value."""
    if registry is None:
        return "''", ()
    linked = sorted({p for link in links for p in (link.pool_a, link.pool_b)})
    dated = tuple(p for p in linked if p in registry.by_id and registry.by_id[p].family)
    if not dated:
        return "''", ()
    return "concat_ws('|', " + ", ".join(legal_entity_sql(registry.by_id[p]) for p in dated) + ")", dated


# ----------------------------------------------------------------------------------------- components


@dataclass(frozen=True)
class Group:
    id: str
    name: str
    members: tuple[str, ...]   # legal entity ids (family:..., pool ids, unmapped:...)


def _lead(members: Iterable[str]) -> str:
    """The member a group is named after: a family first, then a registry pool, then anything
    else (an unmapped pool name from a capture); the smallest id within each kind."""
    def rank(entity: str) -> tuple[int, str]:
        if entity.startswith(FAMILY_PREFIX):
            return 0, entity
        return (1 if ":" not in entity else 2), entity
    return min(members, key=rank)


def _components(pairs: Iterable[tuple[str, str]]) -> list[list[str]]:
    """Connected components of the graph whose edges are ``pairs`` (union-find with path halving),
    each a list of its nodes; a pair of one node twice gives a component of one."""
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b in pairs:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)  # deterministic whatever the pair order
    components: dict[str, list[str]] = defaultdict(list)
    for node in list(parent):
        components[find(node)].append(node)
    return list(components.values())


def groups_for(era: str, era_pools: tuple[str, ...], links: Iterable[InferredLink],
               names: Mapping[str, str]) -> list[Group]:
    """Connected components (two or more legal entities) of the link graph for one era value: each
    linked pool stands for its legal entity then (``era`` gives it for the pools in ``era_pools``;
    every other pool's entity is itself)."""
    entity = dict(zip(era_pools, era.split("|") if era_pools else (), strict=True))
    out = []
    for members in _components((entity.get(link.pool_a, link.pool_a), entity.get(link.pool_b, link.pool_b))
                               for link in links):
        if len(members) < 2:
            continue
        lead = _lead(members)
        out.append(Group(GROUP_PREFIX + lead, f"{names.get(lead, lead)} group", tuple(sorted(members))))
    return sorted(out, key=lambda g: g.id)


def entity_names(registry: Registry | None) -> dict[str, str]:
    """Display names of legal entity ids: ``family:<id>`` -> family name, pool id -> pool name."""
    if registry is None:
        return {}
    names = {FAMILY_PREFIX + f.id: f.name for f in registry.families}
    names.update({p.id: p.name for p in registry.pools})
    return names


def group_map_rows(eras: Iterable[str], era_pools: tuple[str, ...], links: list[InferredLink],
                   names: Mapping[str, str]) -> list[tuple[str, str, str, str]]:
    """(era, legal entity, group id, group name) for every legal entity in a group, every era."""
    rows = []
    for era in sorted(set(eras)):
        for group in groups_for(era, era_pools, links, names):
            rows += [(era, member, group.id, group.name) for member in group.members]
    return rows


def registry_for_version(con: duckdb.DuckDBPyConnection, version: str | None) -> Registry | None:
    """The registry behind an attribution version (``<registry hash>[+settings]``), from the stored
    pool_definitions; None when the warehouse does not hold it."""
    if version is None or "pool_definitions" not in present_tables(con):
        return None
    registry_hash = version.split("+", 1)[0]
    row = con.execute("SELECT any_value(value) FROM pool_definitions WHERE registry_version = ? AND kind = 'document'",
                      [registry_hash]).fetchone()
    if row is None or row[0] is None:
        return None
    return _parse_cached(registry_hash, row[0])


_PARSED: dict[str, Registry] = {}


def _parse_cached(registry_hash: str, text: str) -> Registry:
    from pipeline.attribution.registry import parse_registry

    registry = _PARSED.get(registry_hash)
    if registry is None:
        registry = parse_registry(json.loads(text))
        if registry.version != registry_hash:
            raise FamiliesError(f"the stored registry document of version {registry_hash} hashes to {registry.version}")
        if len(_PARSED) > 4:
            _PARSED.clear()
        _PARSED[registry_hash] = registry
    return registry


# ------------------------------------------------------------------------------ listing and suggestions


def _window_text(m: FamilyMembership) -> str:
    """When a membership holds: heights and/or block times (UTC), '' for always."""
    from pipeline.attribution.registry import format_time

    parts = []
    if not m.heights.is_open:
        parts.append(f"heights {'' if m.heights.from_height is None else m.heights.from_height}.."
                     f"{'' if m.heights.to_height is None else m.heights.to_height}")
    if not m.times.is_open:
        parts.append(f"{'' if m.times.from_time is None else format_time(m.times.from_time)}.."
                     f"{'' if m.times.to_time is None else format_time(m.times.to_time)}")
    return ", ".join(parts) or "always"


def legal_evidence_text(m: FamilyMembership) -> str:
    """The dated links behind a membership as their list states them, with each link's source."""
    if not m.evidence:
        return m.note or ""
    steps = []
    for e in m.evidence:
        if e.from_month and e.to_month:
            months = f"{e.from_month} to {e.to_month}, excl."
        elif e.from_month or e.to_month:
            months = f"from {e.from_month}" if e.from_month else f"before {e.to_month}"
        else:
            months = "no dates"
        steps.append(f"{e.name} -> {e.parent} ({months}; {e.link or 'no source link'})")
    return "; ".join(steps)


def family_link_rows(registry: Registry, links: Iterable[InferredLink],
                     settings: InferenceSettings) -> list[dict[str, Any]]:
    """Every link the levels rest on, one row each: the registry's family memberships (level legal,
    entity ``family:<id>``) and the inferred links (level inferred, with whether they reach the
    thresholds). ``evidence``: source links, observations, co-spend counts."""
    rows: list[dict[str, Any]] = []
    names = {f.id: f.name for f in registry.families}
    for pool in sorted(registry.pools, key=lambda p: p.id):
        for m in pool.family:
            rows.append({"level": "legal", "kind": "membership", "entity": FAMILY_PREFIX + m.family,
                         "entity_name": names.get(m.family, m.family), "pool_a": pool.id, "pool_b": None,
                         "when": _window_text(m), "sources": list(m.sources), "evidence": legal_evidence_text(m),
                         "counted": True})
    for link in sorted(links, key=lambda x: (x.kind, x.pool_a, x.pool_b)):
        rows.append({"level": "inferred", "kind": link.kind, "entity": None, "entity_name": None,
                     "pool_a": link.pool_a, "pool_b": link.pool_b,
                     "when": f"heights {link.first_height}..{link.last_height}",
                     "sources": ["template_links" if link.kind == "template" else "custody_links"],
                     "evidence": ", ".join(f"{k} {v:,}" for k, v in link.evidence), "counted": link.counts(settings)})
    return rows


def _open_family(pool: Pool | None) -> str | None:
    """The family a pool is in with no end (its current membership), if any."""
    if pool is None:
        return None
    for m in pool.family:
        if m.heights.to_height is None and m.times.to_time is None:
            return m.family
    return None


def suggest_memberships(registry: Registry, links: Iterable[InferredLink],
                        settings: InferenceSettings) -> dict[str, list[dict[str, Any]]]:
    """Registry rules a person may accept (``families`` and ``memberships`` entries of a rules
    file such as pipeline/data/registry_rules.json) from the inferred links that reach the
    thresholds: each connected group of registry pools becomes one family, the family one of them
    already has with no end date if there is exactly one such, else a new ``inferred-<pool>``
    family. Pools already in that family are left out; pools with another open family are not
    moved (that would contradict the legal links) and are named in the note instead. Nothing
    here changes a registry: it is a proposal with its evidence."""
    used = [link for link in counted(links, settings)
            if link.pool_a in registry.by_id and link.pool_b in registry.by_id]
    components = _components((link.pool_a, link.pool_b) for link in used)
    families: list[dict[str, Any]] = []
    memberships: list[dict[str, Any]] = []
    declared = {f.id for f in registry.families}
    for members in sorted(sorted(c) for c in components):
        inside = [lk for lk in used if lk.pool_a in members]
        kinds = defaultdict(int)
        for lk in inside:
            kinds[lk.kind] += 1
        evidence = (f"pools {', '.join(members)} joined by "
                    + " and ".join(f"{n} {kind} link(s)" for kind, n in sorted(kinds.items()))
                    + f" at or above the thresholds ({settings.describe()})")
        current = {p: _open_family(registry.by_id[p]) for p in members}
        existing = sorted({f for f in current.values() if f is not None})
        if len(existing) == 1:
            family = existing[0]
        else:
            family = f"inferred-{members[0]}"
            if family not in declared:
                families.append({"id": family, "name": f"{registry.by_id[members[0]].name} group (inferred)",
                                 "note": f"suggested by poolwatch pools families --suggest from: {evidence}"})
        others = sorted(p for p, f in current.items() if f is not None and f != family)
        first = min(lk.first_height for lk in inside)
        for pool in members:
            if current[pool] is not None:
                continue  # already in this family, or in another one that a suggestion must not override
            own = "; ".join(f"{lk.kind} link with {lk.pool_b if lk.pool_a == pool else lk.pool_a}: {lk.describe()}"
                            for lk in inside if pool in (lk.pool_a, lk.pool_b))
            memberships.append({"pool": pool, "family": family, "from_height": first,
                                "note": f"suggested by poolwatch pools families --suggest from: {own}"
                                        + (f"; not suggested for {', '.join(others)}: already in another family"
                                           if others else "")})
    return {"families": families, "memberships": memberships}
