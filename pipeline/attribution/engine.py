"""Stored coinbases + a registry -> attributions (one row per block) and their candidates.

Input is what the warehouse stores (``blocks`` and ``coinbase_outputs`` as Arrow tables), never the
node, so the whole history can be re-attributed with any registry version.

Matching (docs/attribution.md):
- Tags are literal bytes searched in the raw scriptSig bytes. Case rule: ASCII letters are folded
  (``bytes.lower()`` on both sides); every other byte, UTF-8 included, must match exactly. All tags
  are found, overlapping ones included, in time linear in the scriptSig length for a given registry:
  one compiled pattern of escaped literals laid out as a trie (no repetition), searched again from
  one byte after each match's start.
- Addresses are matched as scriptPubKeys: each registry address is turned into its script once, and
  every value-bearing coinbase output of any script type is looked up by its script bytes. An
  address only matches on its own network (regtest may borrow mainnet scripts when asked).
- Windows (from/to height, inclusive) are respected for tags, addresses and families.
- A tag's own conditions (registry fields, docs/attribution.md "Robustness rules"): a short tag with
  neither a closed window nor a position never matches; a positioned tag matches only at an
  occurrence that stands where its position says; a software signature (ckpool's ``ckpool``) and
  another pool's tag inside a pool's user text are recorded as candidates but are not evidence.

Precedence over the evidence (independent of registry order):
1. Pools both paid and named by their own tag: most value paid, then the longest tag, then the
   smallest pool id (OCEAN's tag and output beat a larger payout to a miner's registered address).
2. Payouts alone: most value paid to the pool's matched outputs, then the smallest pool id.
3. Tags only: the longest tag, then the earliest offset in the scriptSig, then the smallest pool id.
Every candidate is kept; a block whose evidence names more than one pool is flagged ``conflict``.
The matching rules have a version of their own (``RULES_VERSION``), part of the attribution version.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from pipeline.chain.networks import network_for_chain
from pipeline.attribution.registry import UNKNOWN_POOL_ID, Address, Pool, Registry, Tag, TagPosition, canonical_json
from pipeline.store.schemas import table_spec

UNKNOWN_POOL_NAME = "Unknown"
CROSS_NETWORK_SUFFIX = "+cross-network"
# The engine's matching rules. Bump it whenever the same blocks and registry could give other
# attributions (docs/attribution.md, "Engine rules version"); it is part of the attribution version,
# so rows computed under older rules are never taken for current ones.
#   1: tags anywhere, address evidence before tag evidence (labelled with the bare registry hash).
#   2: short tags confined, positions, software signatures, user text, paid-and-tagged first.
RULES_VERSION = 2


# ------------------------------------------------------------------------------------------ lineage


@dataclass(frozen=True)
class AttributionSettings:
    """Settings that change what attribution gives for the same blocks and registry. They are part
    of the recorded version: rows carry ``attribution_version(registry version, settings)``.

    ``cross_network``: let a mainnet registry's addresses match on a regtest chain (demos and tests
    build regtest chains whose coinbases pay mainnet pools' scripts); never allowed on real chains.
    """

    cross_network: bool = False

    def to_meta(self) -> dict[str, Any]:
        return {"cross_network": self.cross_network}

    def describe(self) -> str:
        return f"cross-network matching {'on' if self.cross_network else 'off'}"


def rules_suffix(rules_version: int) -> str:
    """The label of an engine rules version in the attribution version: rules 1 predate the label
    (its rows carry the bare registry hash), later rules add ``+rules-<N>``."""
    return "" if rules_version <= 1 else f"+rules-{rules_version}"


_RULES_LABEL = re.compile(r"\+rules-([0-9]+)(?:\+|$)")


def rules_of(version: str) -> int:
    """The engine rules version an attribution version was computed under (1 when unlabelled)."""
    m = _RULES_LABEL.search(version)
    return int(m.group(1)) if m else 1


def rules_staleness(version: str | None) -> str:
    """Why rows labelled ``version`` are not what this engine computes, or '' when they are."""
    if not version or rules_of(version) == RULES_VERSION:
        return ""
    return (f"computed under engine rules {rules_of(version)}, this poolwatch applies rules {RULES_VERSION} "
            "(docs/attribution.md, \"Engine rules version\")")


def attribution_version(registry_version: str, cross_network: bool) -> str:
    """What attribution rows carry in ``registry_version``: the registry's content hash, the engine's
    rules version (``+rules-<N>``), then ``+<setting>`` for each setting that differs from its
    default (semver-style build metadata), so the same blocks, registry, engine rules and settings
    always give the same rows under the same label. Reads ``RULES_VERSION`` at call time."""
    return registry_version + rules_suffix(RULES_VERSION) + (CROSS_NETWORK_SUFFIX if cross_network else "")


def recorded_settings(meta: dict[str, Any]) -> AttributionSettings | None:
    """The attribution settings a warehouse recorded (meta.json), or None before its first
    attribution. Warehouses written before settings were recorded kept the one flag they had."""
    settings = meta.get("attribution_settings")
    if isinstance(settings, dict):
        return AttributionSettings(cross_network=bool(settings.get("cross_network", False)))
    if "registry_cross_network" in meta:
        return AttributionSettings(cross_network=bool(meta["registry_cross_network"]))
    return AttributionSettings() if meta.get("registry_version") else None


@dataclass(frozen=True)
class TagRule:
    pool: Pool
    tag: Tag
    rule: str


@dataclass(frozen=True)
class AddressRule:
    pool: Pool
    address: Address
    rule: str


@dataclass(frozen=True)
class Candidate:
    pool_id: str
    method: str            # address | tag
    rule: str
    output_index: int | None = None
    value_sat: int | None = None
    tag_offset: int | None = None
    tag_length: int = 0
    tag_key: bytes = b""   # the tag, ASCII-lowered, as matched
    # False for a tag that is recorded but cannot decide or support a pool: a software signature,
    # or another pool's tag inside a pool's user text (set by Matcher.candidates).
    evidence: bool = True


@dataclass(frozen=True)
class Decision:
    pool_id: str
    method: str            # address | tag | both | none
    rule: str | None
    candidates: tuple[Candidate, ...]
    pool_ids: tuple[str, ...]        # every pool among the candidates
    conflict: bool                   # the evidence (see evidence_pools) names more than one pool
    chosen: tuple[bool, ...] = ()    # per candidate: evidence for the chosen pool


class Matcher:
    """A registry compiled for one chain: script -> address rules, one tag automaton."""

    def __init__(self, registry: Registry, chain: str, allow_cross_network: bool = False) -> None:
        self.registry = registry
        self.network = network_for_chain(chain).name
        self.version = attribution_version(registry.version, allow_cross_network)
        usable = {self.network}
        if allow_cross_network:
            if self.network != "regtest":
                raise ValueError(f"cross-network matching is only for regtest chains (chain is {self.network!r}): "
                                 "a mainnet registry's scripts must never match on test networks or vice versa")
            usable.add("main")
        self.by_script: dict[str, list[AddressRule]] = defaultdict(list)
        tag_rules: dict[bytes, list[TagRule]] = defaultdict(list)
        for pool in registry.pools:
            for addr in pool.addresses:
                if addr.network in usable:
                    self.by_script[addr.script.hex()].append(AddressRule(pool, addr, "address:" + addr.address))
            for tag in pool.tags:
                # A short tag with neither a closed window nor a position (possible only in a
                # registry version stored before that rule) would match random bytes: never searched.
                if tag.active:
                    tag_rules[tag.value.lower()].append(TagRule(pool, tag, "tag:" + tag.text))
        self.tag_rules = dict(tag_rules)
        self.scripts = pa.array(sorted(self.by_script), pa.string())
        self._tag_regex = _tag_regex(tuple(sorted(self.tag_rules)))
        # For each tag, the other tags inside it: a search reports only the longest tag starting at
        # an offset, so shorter tags starting there (or inside it) come from this closure.
        keys = list(self.tag_rules)
        self._inner = {t: tuple(u for u in keys if u != t and u in t) for t in keys}

    def tag_hits(self, script_sig: bytes) -> dict[bytes, int]:
        """Every registry tag present in ``script_sig`` -> offset of its first occurrence."""
        return self._hits(script_sig.lower())

    def _hits(self, lowered: bytes) -> dict[bytes, int]:
        if self._tag_regex is None:
            return {}
        hits: dict[bytes, int] = {}
        search = self._tag_regex.search
        m = search(lowered)
        while m is not None:
            longest = m.group()
            if longest not in hits:
                hits[longest] = m.start()
                for inner in self._inner[longest]:
                    if inner not in hits:
                        hits[inner] = lowered.find(inner)
            # Restart one byte after this match's start, not after its end: tags that overlap it
            # (start inside it) are found too. Each search is a C scan, so the loop runs once per
            # offset where some tag starts, not once per byte.
            m = search(lowered, m.start() + 1)
        return hits

    def candidates(self, height: int, script_sig: bytes,
                   outputs: Iterable[tuple[int, int, str]]) -> list[Candidate]:
        """All (pool, method, rule) matches for one block; ``outputs`` = (index, value_sat, script_hex)."""
        found: list[Candidate] = []
        for index, value, script_hex in outputs:
            if value <= 0:
                continue  # zero-value outputs (commitments, markers) pay no one
            for rule in self.by_script.get(script_hex, ()):
                if rule.address.heights.contains(height):
                    found.append(Candidate(rule.pool.id, "address", rule.rule, index, value))
        lowered = script_sig.lower()
        tags: list[Candidate] = []
        declaring: list[Candidate] = []  # tags after which the pool's miners write (user_text_after)
        for key, first in self._hits(lowered).items():
            for rule in self.tag_rules[key]:
                tag = rule.tag
                if not tag.heights.contains(height):
                    continue
                offset = first if tag.position is None else _placed_offset(lowered, key, first, tag.position)
                if offset is None:
                    continue  # present, but nowhere its position allows: no candidate at all
                candidate = Candidate(rule.pool.id, "tag", rule.rule, tag_offset=offset, tag_length=len(key),
                                      tag_key=key, evidence=not tag.software)
                tags.append(candidate)
                if tag.user_text_after:
                    declaring.append(candidate)
        if declaring:
            tags = _outside_user_text(tags, declaring)
        return found + tags


def _outside_user_text(tags: list[Candidate], declaring: list[Candidate]) -> list[Candidate]:
    """Mark other pools' tags that start in a pool's user text as not evidence.

    The region is declared by the earliest tag with ``user_text_after`` that is evidence itself
    (not a software signature, not nested in a longer matched tag of another pool such as
    ``/ViaBTC/`` in ``/ViaBTC/TATMAS Pool/``); it runs from that tag's end to the end of the
    scriptSig. A tag before it, or overlapping it, is evidence as usual."""
    eligible = [c for c in declaring if c.evidence and not _nested(c, tags)]
    if not eligible:
        return tags
    owner = min(eligible, key=lambda c: (c.tag_offset, -c.tag_length, c.pool_id))
    region = owner.tag_offset + owner.tag_length
    return [replace(c, evidence=False) if c.pool_id != owner.pool_id and c.tag_offset >= region else c
            for c in tags]


def _placed_offset(lowered: bytes, key: bytes, first: int, position: TagPosition) -> int | None:
    """The first occurrence of ``key`` (from ``first`` on) that stands where ``position`` says:
    every occurrence is tried, so a stray earlier copy does not hide the one in place."""
    offset = first
    while offset >= 0:
        if position.allows(lowered, offset):
            return offset
        offset = lowered.find(key, offset + 1)
    return None


@lru_cache(maxsize=16)
def _tag_regex(tags: tuple[bytes, ...]) -> re.Pattern[bytes] | None:
    """One pattern for all tags, reporting at the leftmost offset where a tag starts the longest tag
    starting there.

    The tags are laid out as a trie (``/sl(?:ush/|...)``): at each node the next scriptSig byte
    selects at most one branch, and where a tag ends with longer tags continuing, the continuation
    is an optional group tried first (greedy), so the match is the longest tag on the path. A flat
    alternation of literals gives the same matches but tries every tag at every offset that starts
    one: the trie is several times faster on the same input and still has no repetition, so a
    search stays linear in the scriptSig length (times the longest tag)."""
    if not tags:
        return None
    trie: dict = {}
    for tag in tags:
        node = trie
        for byte in tag:
            node = node.setdefault(byte, {})
        node[None] = True  # a tag ends here

    def pattern(node: dict) -> bytes:
        branches = [re.escape(bytes([b])) + pattern(node[b]) for b in sorted(k for k in node if k is not None)]
        if not branches:
            return b""
        body = branches[0] if len(branches) == 1 else b"(?:" + b"|".join(branches) + b")"
        if None in node:  # a tag ends here: longer tags first, else this one
            return (b"(?:" + body + b")?") if len(branches) == 1 else body + b"?"
        return body

    return re.compile(pattern(trie), re.DOTALL)


def _nested(c: Candidate, tags: list[Candidate]) -> bool:
    """A tag inside a longer matched tag of another pool ("ckpool" in "/solo.ckpool.org/"): part of
    that tag's text, not separate evidence."""
    return any(o.pool_id != c.pool_id and o.tag_length > c.tag_length and c.tag_key in o.tag_key for o in tags)


def evidence(candidates: list[Candidate]) -> list[bool]:
    """Per candidate, whether it is evidence: every address, and every tag that is not marked
    otherwise (software signature, another pool's user text) and not nested in a longer matched
    tag of another pool. Non-evidence candidates are recorded but decide nothing."""
    tags = [c for c in candidates if c.method == "tag"]
    if len({c.pool_id for c in tags}) < 2:  # nesting needs a tag of another pool (the common case)
        return [c.method != "tag" or c.evidence for c in candidates]
    return [c.method != "tag" or (c.evidence and not _nested(c, tags)) for c in candidates]


def evidence_pools(candidates: list[Candidate]) -> tuple[str, ...]:
    """Distinct pools the evidence points to (see ``evidence``)."""
    return tuple(sorted({c.pool_id for c, e in zip(candidates, evidence(candidates)) if e}))


def decide(candidates: list[Candidate]) -> Decision:
    """The documented precedence; the result depends only on the candidate set, not its order."""
    if not candidates:
        return Decision(UNKNOWN_POOL_ID, "none", None, (), (), False)
    if len(candidates) == 1:  # most blocks: one payout or one tag, nothing to weigh
        c = candidates[0]
        if c.evidence:
            return Decision(c.pool_id, c.method, c.rule, (c,), (c.pool_id,), False, (True,))
        return Decision(UNKNOWN_POOL_ID, "none", None, (c,), (c.pool_id,), False, (False,))
    pool_ids = tuple(sorted({c.pool_id for c in candidates}))
    flags = evidence(candidates)
    used = [c for c, e in zip(candidates, flags) if e]
    conflict = len({c.pool_id for c in used}) > 1
    if not used:
        return Decision(UNKNOWN_POOL_ID, "none", None, tuple(candidates), pool_ids, False,
                        tuple(False for _ in candidates))
    by_address = [c for c in used if c.method == "address"]
    by_tag = [c for c in used if c.method == "tag"]
    longest: dict[str, int] = {}
    for c in by_tag:
        longest[c.pool_id] = max(longest.get(c.pool_id, 0), c.tag_length)
    if by_address:
        paid: dict[str, int] = defaultdict(int)
        for c in by_address:
            paid[c.pool_id] += c.value_sat or 0
        both = [pid for pid in paid if pid in longest]
        if both:
            # 1. paid and tagged: what a pool that pays many miners itself (OCEAN) looks like
            winner = min(both, key=lambda pid: (-paid[pid], -longest[pid], pid))
        else:
            # 2. payouts alone
            winner = min(paid, key=lambda pid: (-paid[pid], pid))
        best_addr = min((c for c in by_address if c.pool_id == winner),
                        key=lambda c: (-(c.value_sat or 0), c.output_index))
        supporting = [c for c in by_tag if c.pool_id == winner]
        if supporting:
            best_tag = min(supporting, key=lambda c: (-c.tag_length, c.tag_offset, c.rule))
            method, rule = "both", f"{best_addr.rule} + {best_tag.rule}"
        else:
            method, rule = "address", best_addr.rule
    else:
        # 3. tags only
        best_tag = min(by_tag, key=lambda c: (-c.tag_length, c.tag_offset, c.pool_id, c.rule))
        winner, method, rule = best_tag.pool_id, "tag", best_tag.rule
    chosen = tuple(e and c.pool_id == winner for c, e in zip(candidates, flags))
    return Decision(winner, method, rule, tuple(candidates), pool_ids, conflict, chosen)


def _outputs_by_block(outputs: pa.Table, matcher: Matcher) -> dict[tuple[int, str], list[tuple[int, int, str]]]:
    """Only outputs whose script is in the registry matter: filter in Arrow, group the few left."""
    if outputs.num_rows == 0 or len(matcher.scripts) == 0:
        return {}
    mask = pc.and_(pc.greater(outputs["value_sat"], 0), pc.is_in(outputs["script_hex"], value_set=matcher.scripts))
    hits = outputs.filter(mask).select(["height", "block_hash", "output_index", "value_sat", "script_hex"])
    grouped: dict[tuple[int, str], list[tuple[int, int, str]]] = defaultdict(list)
    for h, bh, idx, val, script in zip(*(hits[c].to_pylist() for c in hits.column_names)):
        grouped[(h, bh)].append((idx, val, script))
    return grouped


def attribute_tables(blocks: pa.Table, outputs: pa.Table, registry: Registry, chain: str,
                     allow_cross_network: bool = False) -> dict[str, pa.Table]:
    """Attribute every block in ``blocks``; returns {"attributions", "attribution_candidates"}."""
    matcher = compiled_matcher(registry, chain, allow_cross_network)
    return attribute_with(matcher, blocks, outputs)


_MATCHERS: dict[tuple[str, str, bool, int], Matcher] = {}


def compiled_matcher(registry: Registry, chain: str, allow_cross_network: bool = False) -> Matcher:
    """Matchers are cached per (registry version, chain, flag, engine rules): sync calls this once
    per batch. The rules version is in the key because a matcher carries its attribution version."""
    key = (registry.version, network_for_chain(chain).name, allow_cross_network, RULES_VERSION)
    matcher = _MATCHERS.get(key)
    if matcher is None:
        matcher = Matcher(registry, chain, allow_cross_network)
        if len(_MATCHERS) > 8:
            _MATCHERS.clear()
        _MATCHERS[key] = matcher
    return matcher


def attribute_with(matcher: Matcher, blocks: pa.Table, outputs: pa.Table) -> dict[str, pa.Table]:
    registry = matcher.registry
    version = matcher.version
    by_block = _outputs_by_block(outputs, matcher)
    heights = blocks["height"].to_pylist()
    hashes = blocks["hash"].to_pylist()
    sigs = blocks["coinbase_script_sig_hex"].to_pylist()
    pools = registry.by_id
    families = registry.family_names
    a_cols: dict[str, list] = {k: [] for k in ("height", "block_hash", "pool_id", "pool_name", "family", "method",
                                               "rule", "candidate_count", "candidate_pool_ids", "conflict")}
    c_cols: dict[str, list] = {k: [] for k in ("height", "block_hash", "pool_id", "method", "rule", "output_index",
                                               "value_sat", "tag_offset", "chosen")}
    for height, block_hash, sig_hex in zip(heights, hashes, sigs):
        cands = matcher.candidates(height, bytes.fromhex(sig_hex), by_block.get((height, block_hash), ()))
        d = decide(cands)
        pool = pools.get(d.pool_id)
        a_cols["height"].append(height)
        a_cols["block_hash"].append(block_hash)
        a_cols["pool_id"].append(d.pool_id)
        a_cols["pool_name"].append(pool.name if pool else UNKNOWN_POOL_NAME)
        family = pool.family_at(height) if pool else None
        a_cols["family"].append(family if family is None or family in families else None)
        a_cols["method"].append(d.method)
        a_cols["rule"].append(d.rule)
        a_cols["candidate_count"].append(len(cands))
        a_cols["candidate_pool_ids"].append(list(d.pool_ids))
        a_cols["conflict"].append(d.conflict)
        for c, chosen in zip(cands, d.chosen):
            c_cols["height"].append(height)
            c_cols["block_hash"].append(block_hash)
            c_cols["pool_id"].append(c.pool_id)
            c_cols["method"].append(c.method)
            c_cols["rule"].append(c.rule)
            c_cols["output_index"].append(c.output_index)
            c_cols["value_sat"].append(c.value_sat)
            c_cols["tag_offset"].append(c.tag_offset)
            c_cols["chosen"].append(chosen)
    a_cols["registry_version"] = [version] * len(a_cols["height"])
    c_cols["registry_version"] = [version] * len(c_cols["height"])
    return {
        "attributions": _build("attributions", a_cols),
        "attribution_candidates": _build("attribution_candidates", c_cols),
    }


def _build(name: str, cols: dict[str, list]) -> pa.Table:
    spec = table_spec(name)
    schema = spec.arrow_schema
    arrays = [pa.array(cols[f.name], type=f.type) for f in schema]
    return spec.conform(pa.Table.from_arrays(arrays, schema=schema))


def pool_definitions_table(registry: Registry) -> pa.Table:
    """One row per pool / tag / address / family membership, plus the registry's canonical JSON."""
    spec = table_spec("pool_definitions")
    rows: list[dict[str, Any]] = [{"kind": "document", "value": canonical_json(registry.document)}]
    for p in registry.pools:
        base = {"pool_id": p.id, "pool_name": p.name, "slug": p.slug, "link": p.link}
        rows.append({**base, "kind": "pool", "value": p.id})
        for t in p.tags:
            rows.append({**base, "kind": "tag", "value": t.text, "from_height": t.heights.from_height,
                         "to_height": t.heights.to_height, "sources": list(t.sources)})
        for a in p.addresses:
            rows.append({**base, "kind": "address", "value": a.address, "script_hex": a.script.hex(),
                         "network": a.network, "from_height": a.heights.from_height,
                         "to_height": a.heights.to_height, "sources": list(a.sources)})
        for m in p.family:
            rows.append({**base, "kind": "family", "value": m.family, "from_height": m.heights.from_height,
                         "to_height": m.heights.to_height})
    cols = {c: [r.get(c) for r in rows] for c in spec.column_names if c != "registry_version"}
    cols["registry_version"] = [registry.version] * len(rows)
    return _build("pool_definitions", cols)


def registry_from_definitions(definitions: pa.Table, version: str) -> Registry:
    """Reload a registry version stored in ``pool_definitions`` (its document row)."""
    import json

    from pipeline.attribution.registry import RegistryError, parse_registry

    docs = definitions.filter(pc.and_(pc.equal(definitions["registry_version"], version),
                                      pc.equal(definitions["kind"], "document")))
    if docs.num_rows == 0:
        raise RegistryError(f"registry version {version!r} is not stored in pool_definitions")
    # Not strict: a version stored before short tags had to be confined still loads (the engine
    # never matches its unconfined short tags).
    registry = parse_registry(json.loads(docs["value"][0].as_py()), strict=False)
    if registry.version != version:
        raise RegistryError(f"stored registry document hashes to {registry.version}, not {version}")
    return registry


# ------------------------------------------------------------------------------------ stored history

def stored_or_computed(warehouse, registry: Registry, chain: str, allow_cross_network: bool = False,
                       chunk_size: int = 100_000) -> pa.Table:
    """Attributions of every stored block under ``registry``: the stored rows when that version has
    been run over the whole stored history, else computed in memory from the stored coinbases
    (nothing is written)."""
    stored = warehouse.stored_range()
    if stored is None:
        return table_spec("attributions").arrow_schema.empty_table()
    n_blocks = warehouse.read("blocks", columns=["height"]).num_rows
    version = attribution_version(registry.version, allow_cross_network)
    if warehouse.table_dir("attributions").is_dir():
        rows = warehouse.read("attributions", where=f"registry_version = '{version}'")
        if rows.num_rows == n_blocks:
            return rows
    matcher = compiled_matcher(registry, chain, allow_cross_network)
    parts = []
    for lo in range(stored[0], stored[1] + 1, chunk_size):
        where = f"height BETWEEN {lo} AND {lo + chunk_size - 1}"
        blocks = warehouse.read("blocks", where=where, columns=["height", "hash", "coinbase_script_sig_hex"])
        outputs = warehouse.read("coinbase_outputs", where=where,
                                 columns=["height", "block_hash", "output_index", "value_sat", "script_hex"])
        parts.append(attribute_with(matcher, blocks, outputs)["attributions"])
    return pa.concat_tables(parts)


def changed_blocks(old: pa.Table, new: pa.Table) -> pa.Table:
    """Heights whose pool differs between two attributions tables (joined on height and block hash)."""
    a = old.select(["height", "block_hash", "pool_id", "rule"]).rename_columns(
        ["height", "block_hash", "old_pool_id", "old_rule"])
    b = new.select(["height", "block_hash", "pool_id", "rule"]).rename_columns(
        ["height", "block_hash", "new_pool_id", "new_rule"])
    joined = a.join(b, keys=["height", "block_hash"], join_type="inner")
    changed = joined.filter(pc.not_equal(joined["old_pool_id"], joined["new_pool_id"]))
    return changed.sort_by("height")


def block_changes(warehouse, old: Registry, new: Registry, chain: str, allow_cross_network: bool = False) -> pa.Table:
    return changed_blocks(stored_or_computed(warehouse, old, chain, allow_cross_network),
                          stored_or_computed(warehouse, new, chain, allow_cross_network))


# ------------------------------------------------------------------------------------------ discovery

_SLASH_TOKEN = re.compile(r"/[^/\x00-\x1f]{3,40}/")
_WORDS_TOKEN = re.compile(r"[^\W_][\w.\-#@]*(?: [\w.\-#@]+){0,4}")


def tag_tokens(coinbase_tag: str) -> set[str]:
    """Candidate tag texts in a coinbase's printable text: '/slash-delimited/' segments and runs of
    up to five words. Random extranonce bytes rarely form the same run twice, so recurrence over
    several blocks separates a pool's tag from noise."""
    tokens = {m.group(0) for m in _SLASH_TOKEN.finditer(coinbase_tag)}
    for m in _WORDS_TOKEN.finditer(coinbase_tag):
        text = m.group(0).strip()
        if len(text) >= 5 and sum(ch.isalpha() for ch in text) >= 4:
            tokens.add(text)
    return tokens


def suggest_entries(unknown_blocks: Iterable[tuple[int, str]], payouts: Iterable[tuple[int, str, str]],
                    min_blocks: int = 3, network: str = "main") -> list[dict[str, Any]]:
    """Proposed registry entries from unknown blocks.

    ``unknown_blocks``: (height, coinbase_tag text); ``payouts``: (height, address, script_type) of
    their value-bearing outputs. Recurring tags and addresses are grouped when they occur in the
    same blocks; each group becomes one proposed pool with its evidence (blocks, first/last height).
    """
    from pipeline.attribution.importers import slugify

    heights_by: dict[tuple[str, str], set[int]] = defaultdict(set)
    for height, text in unknown_blocks:
        for token in tag_tokens(text or ""):
            heights_by[("tag", token)].add(height)
    for height, address, _ in payouts:
        if address:
            heights_by[("address", address)].add(height)
    recurring = {k: v for k, v in heights_by.items() if len(v) >= min_blocks}
    # A tag inside a longer recurring tag seen in the same blocks adds nothing ("Mined by" in
    # "Mined by Example"): keep the longest.
    for key in [k for k in recurring if k[0] == "tag"]:
        if any(o[0] == "tag" and o != key and key[1] in o[1] and recurring[o] >= recurring[key] for o in recurring):
            del recurring[key]
    keys = sorted(recurring, key=lambda k: (-len(recurring[k]), k))
    parent = {k: k for k in keys}

    def find(k):
        while parent[k] != k:
            parent[k] = parent[parent[k]]
            k = parent[k]
        return k

    for i, a in enumerate(keys):
        for b in keys[i + 1:]:
            shared = len(recurring[a] & recurring[b])
            if shared * 2 >= min(len(recurring[a]), len(recurring[b])):
                parent[find(b)] = find(a)
    groups: dict[tuple, list[tuple[str, str]]] = defaultdict(list)
    for k in keys:
        groups[find(k)].append(k)
    proposals = []
    taken: set[str] = set()
    for root, members in groups.items():
        heights = set().union(*(recurring[m] for m in members))
        tags = sorted(m[1] for m in members if m[0] == "tag")
        addresses = sorted(m[1] for m in members if m[0] == "address")
        label = max(tags, key=lambda t: (len(recurring[("tag", t)]), len(t))) if tags else addresses[0]
        base = "new-" + slugify(label.strip("/"))[:40]
        pid, n = base, 2
        while pid in taken:
            pid, n = f"{base}-{n}", n + 1
        taken.add(pid)
        proposals.append({
            "id": pid,
            "name": label.strip("/ ") or pid,
            "tags": [{"tag": t, "sources": ["suggest"]} for t in tags],
            "addresses": [{"address": a, "network": network, "sources": ["suggest"]} for a in addresses],
            "evidence": {"blocks": len(heights), "first_height": min(heights), "last_height": max(heights),
                         "per_rule": {m[1]: len(recurring[m]) for m in members}},
        })
    proposals.sort(key=lambda p: (-p["evidence"]["blocks"], p["id"]))
    return proposals


def suggest_from_warehouse(warehouse, registry: Registry, min_blocks: int = 3) -> list[dict[str, Any]]:
    chain = warehouse.meta.get("chain", "main")
    settings = recorded_settings(warehouse.meta) or AttributionSettings()
    attributions = stored_or_computed(warehouse, registry, chain, settings.cross_network)
    unknown = attributions.filter(pc.equal(attributions["pool_id"], UNKNOWN_POOL_ID))
    if unknown.num_rows == 0:
        return []
    heights = pa.array(sorted(set(unknown["height"].to_pylist())), pa.int32())
    blocks = warehouse.read("blocks", columns=["height", "hash", "coinbase_tag"])
    blocks = blocks.filter(pc.is_in(blocks["height"], value_set=heights))
    outputs = warehouse.read("coinbase_outputs", columns=["height", "value_sat", "address", "script_type"])
    outputs = outputs.filter(pc.and_(pc.is_in(outputs["height"], value_set=heights),
                                     pc.greater(outputs["value_sat"], 0)))
    return suggest_entries(zip(blocks["height"].to_pylist(), blocks["coinbase_tag"].to_pylist()),
                           zip(outputs["height"].to_pylist(), outputs["address"].to_pylist(),
                               outputs["script_type"].to_pylist()),
                           min_blocks=min_blocks, network=network_for_chain(chain).name)
