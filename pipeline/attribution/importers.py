"""Importers for the community pool lists, and the merge that turns several lists into one registry.

Readers: mempool's ``pools-v2.json``, the legacy v1 ``pools.json`` (mempool's old file, btc.com's
Blockchain-Known-Pools, 0xB10C's known-mining-pools) and bitcoin-data's per-pool folder.

Merging never picks silently: every disagreement (one tag or address claimed by several pools, a
pool that appears under different names, an entry that cannot be used) becomes a ``resolutions``
entry of the registry, naming the claims, the decision and the written rule that made it. The rules
are data (``pipeline/data/registry_rules.json``): explicit pool identities and owners first, then a
source priority for everything else.

Regenerate the shipped default registry with::

    python -m pipeline.attribution.importers --default [--lists ../shared/pool-lists] [-o pipeline/data/registry.json]
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import unicodedata
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.attribution.registry import FORMAT, FORMAT_VERSION, SHORT_TAG_BYTES, UNKNOWN_POOL_ID, parse_registry

SOURCE_KINDS = ("mempool-v2", "v1", "bitcoin-data")


@dataclass
class SourcePool:
    name: str
    link: str | None
    tags: list[str] = field(default_factory=list)
    addresses: list[str] = field(default_factory=list)
    slug: str | None = None
    network: str | None = None  # forced network for every address (signet lists); None = from encoding


@dataclass
class SourceList:
    id: str
    kind: str
    path: str
    pools: list[SourcePool]
    origin: str | None = None


@dataclass
class Disagreement:
    kind: str       # owner-conflict | rename | invalid-address | short-tag | window | duplicate-in-source
    subject: str
    claims: dict[str, list[str]]  # pool id -> sources claiming it
    decision: str
    rule: str
    reason: str = ""

    def as_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "subject": self.subject, "claims": self.claims, "decision": self.decision,
                "rule": self.rule, "reason": self.reason}


class SourceListError(ValueError):
    """A source list that cannot be read; the message names the file and the entry."""


# ---------------------------------------------------------------------------------------------- readers

def _load_json(path: Path) -> Any:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SourceListError(f"{path}: file not found") from None
    except json.JSONDecodeError as exc:
        raise SourceListError(f"{path}: not valid JSON ({exc})") from None


def _origin(path: Path) -> str | None:
    """First lines of a SOURCE.txt next to (or above) the list, if the folder has one."""
    for folder in (path if path.is_dir() else path.parent, path.parent):
        source = folder / "SOURCE.txt"
        if source.exists():
            lines = [line.strip() for line in source.read_text(encoding="utf-8").splitlines() if line.strip()]
            return "; ".join(lines[:2])
    return None


def _pool_array(items: Any, path: Path) -> list[SourcePool]:
    if not isinstance(items, list):
        raise SourceListError(f"{path}: expected a JSON array of pools")
    return [_pool_object(item, f"{path}[{i}]") for i, item in enumerate(items)]


def _pool_object(item: Any, where: str, network: str | None = None) -> SourcePool:
    if not isinstance(item, dict) or not isinstance(item.get("name"), str) or not item["name"].strip():
        raise SourceListError(f"{where}: a pool needs a non-empty 'name'")
    for key in ("tags", "addresses"):
        value = item.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise SourceListError(f"{where} ({item['name']!r}).{key}: expected a list of strings")
    return SourcePool(item["name"].strip(), item.get("link") or None, list(item.get("tags", [])),
                      list(item.get("addresses", [])), network=network)


def read_mempool_v2(path: Path, source_id: str = "mempool-v2") -> SourceList:
    path = Path(path)
    return SourceList(source_id, "mempool-v2", str(path), _pool_array(_load_json(path), path), _origin(path))


def read_v1(path: Path, source_id: str = "v1") -> SourceList:
    """v1: {coinbase_tags: {tag: {name, link}}, payout_addresses: {addr: {name, link}}, [slugs]}."""
    path = Path(path)
    doc = _load_json(path)
    if not isinstance(doc, dict) or "coinbase_tags" not in doc or "payout_addresses" not in doc:
        raise SourceListError(f"{path}: not a v1 list (needs 'coinbase_tags' and 'payout_addresses')")
    pools: dict[str, SourcePool] = {}
    for section, attr in (("coinbase_tags", "tags"), ("payout_addresses", "addresses")):
        for key, entry in doc[section].items():
            if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
                raise SourceListError(f"{path}: {section}[{key!r}].name missing")
            name = entry["name"].strip()
            pool = pools.setdefault(name, SourcePool(name, entry.get("link") or None))
            pool.link = pool.link or entry.get("link") or None
            getattr(pool, attr).append(key)
    for name, slug in (doc.get("slugs") or {}).items():
        if name in pools and isinstance(slug, str):
            pools[name].slug = slug
    return SourceList(source_id, "v1", str(path), list(pools.values()), _origin(path))


def read_bitcoin_data(folder: Path, source_id: str = "bitcoin-data") -> SourceList:
    """bitcoin-data/mining-pools: ``pools/*.json`` (mainnet) and ``signet-pools/*.json`` (signet)."""
    folder = Path(folder)
    if (folder / "pools").is_dir():
        parts = [(folder / "pools", None), (folder / "signet-pools", "signet")]
    else:  # pointed straight at a pools/ folder
        parts = [(folder, None)]
    pools: list[SourcePool] = []
    for sub, network in parts:
        if not sub.is_dir():
            continue
        for file in sorted(sub.glob("*.json")):
            pool = _pool_object(_load_json(file), str(file), network)
            pool.slug = file.stem
            pools.append(pool)
    if not pools:
        raise SourceListError(f"{folder}: no pool files (*.json) found")
    return SourceList(source_id, "bitcoin-data", str(folder), pools, _origin(folder))


def read_source(kind: str, path: Path, source_id: str | None = None) -> SourceList:
    readers = {"mempool-v2": read_mempool_v2, "v1": read_v1, "bitcoin-data": read_bitcoin_data}
    if kind not in readers:
        raise SourceListError(f"unknown list kind {kind!r}; expected one of {SOURCE_KINDS}")
    return readers[kind](Path(path), source_id or kind)


# ------------------------------------------------------------------------------------------------ merge

def normalize_name(name: str) -> str:
    """Identity key of a pool name: case- and punctuation-insensitive ("BTC.com" == "btccom")."""
    folded = unicodedata.normalize("NFKC", name).casefold()
    return "".join(ch for ch in folded if ch.isalnum())


def slugify(name: str) -> str:
    ascii_name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode().lower()
    slug = re.sub(r"[^a-z0-9]+", "-", ascii_name).strip("-")[:60]
    return slug or "pool-" + "".join(f"{ord(c):x}" for c in name)[:40]


def _address_network(address: str, forced: str | None) -> tuple[str | None, str | None]:
    """(network, problem): the network an address belongs to, from its encoding."""
    from pipeline.chain.scripts import address_to_script

    try:
        _, net = address_to_script(address)
    except ValueError as exc:
        return None, str(exc)
    lowered = address.lower()
    if lowered.startswith("bcrt1"):
        name = "regtest"
    elif net.name == "main":
        name = "main"
    else:
        name = "test"  # tb1/m/n/2 are shared by test, testnet4 and signet
    if forced is not None:
        if name == "main":
            return None, f"a mainnet address in a {forced} list"
        return forced, None
    return name, None


def load_rules(path: Path | None = None) -> dict[str, Any]:
    path = Path(path) if path else Path(__file__).resolve().parent.parent / "data" / "registry_rules.json"
    rules = _load_json(path)
    rules.setdefault("source_priority", [])
    for key in ("pools", "owners", "windows", "drop", "families", "memberships", "tag_rules"):
        rules.setdefault(key, [])
    return rules


@dataclass
class _Claim:
    kind: str        # tag | address
    value: str       # tag text / address as listed
    network: str | None
    pools: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))  # pool key -> sources


def merge_sources(sources: list[SourceList], rules: dict[str, Any] | None = None,
                  description: str = "") -> tuple[dict[str, Any], list[Disagreement]]:
    """Merge lists into one registry document; returns (document, disagreements)."""
    rules = rules or {"source_priority": [], "pools": [], "owners": [], "windows": [], "drop": [],
                      "families": [], "memberships": []}
    priority = _priorities(sources, rules)
    alias_to_id: dict[str, str] = {}
    for entry in rules.get("pools", []):
        for alias in [entry.get("name", "")] + entry.get("aliases", []):
            if alias:
                alias_to_id[normalize_name(alias)] = entry["id"]
    disagreements: list[Disagreement] = []

    # Pool identity: explicit alias rules, else the normalized name.
    names: dict[str, dict[str, str]] = defaultdict(dict)       # key -> source -> name as spelled
    links: dict[str, dict[str, str]] = defaultdict(dict)
    slugs: dict[str, dict[str, str]] = defaultdict(dict)
    claims: dict[tuple, _Claim] = {}
    for src in sources:
        for pool in src.pools:
            key = alias_to_id.get(normalize_name(pool.name)) or "name:" + normalize_name(pool.name)
            names[key].setdefault(src.id, pool.name)
            if pool.link:
                links[key].setdefault(src.id, pool.link)
            if pool.slug:
                slugs[key].setdefault(src.id, pool.slug)
            for tag in pool.tags:
                raw = tag.encode("utf-8")
                if len(raw) < 3:
                    disagreements.append(Disagreement("short-tag", f"tag {tag!r}", {pool.name: [src.id]},
                                                      "dropped", "short-tags",
                                                      "tags under 3 bytes match random extranonce bytes"))
                    continue
                # Matching folds ASCII case, so tags equal under that fold are one rule.
                claim = claims.setdefault(("tag", raw.lower()), _Claim("tag", tag, None))
                claim.pools[key].add(src.id)
            for address in pool.addresses:
                network, problem = _address_network(address, pool.network)
                if problem:
                    disagreements.append(Disagreement("invalid-address", f"address {address!r}",
                                                      {pool.name: [src.id]}, "dropped", "invalid-address", problem))
                    continue
                norm = address.lower() if address.lower().startswith(("bc1", "tb1", "bcrt1")) else address
                claim = claims.setdefault(("address", network, norm), _Claim("address", norm, network))
                claim.pools[key].add(src.id)

    ids = _assign_ids(names, rules, priority)
    display = {key: _best(names[key], priority) for key in names}

    # Renames: different names that share evidence and never appear side by side in one list.
    disagreements += _rename_reports(claims, names, ids, display, alias_to_id, rules)

    owners = {(o["kind"], o["value"].lower() if o["kind"] == "tag" else o["value"]): o for o in rules.get("owners", [])}
    drops = {(d["kind"], d["value"].lower() if d["kind"] == "tag" else d["value"]): d for d in rules.get("drop", [])}
    windows = {(w["kind"], w["value"].lower() if w["kind"] == "tag" else w["value"]): w for w in rules.get("windows", [])}
    tag_rules = {r["value"].lower(): r for r in rules.get("tag_rules", [])}
    pool_tags: dict[str, list[dict]] = defaultdict(list)
    pool_addresses: dict[str, list[dict]] = defaultdict(list)
    for ckey, claim in sorted(claims.items(), key=lambda kv: repr(kv[0])):
        rule_key = (claim.kind, claim.value.lower() if claim.kind == "tag" else claim.value)
        subject = f"{claim.kind} {claim.value!r}"
        by_id: dict[str, set[str]] = defaultdict(set)
        for key, srcs in claim.pools.items():
            by_id[ids[key]] |= srcs
        claim_map = {pid: sorted(s, key=lambda x: priority.get(x, 99)) for pid, s in sorted(by_id.items())}
        if rule_key in drops:
            disagreements.append(Disagreement("dropped", subject, claim_map, "dropped",
                                              "drop:" + claim.value, drops[rule_key].get("reason", "")))
            continue
        winner = _decide_owner(claim, claim_map, rule_key, owners, priority, subject, disagreements)
        if winner is None:
            continue
        entry: dict[str, Any] = {"sources": claim_map[winner]}
        window = windows.get(rule_key)
        if window:
            for bound in ("from_height", "to_height"):
                if window.get(bound) is not None:
                    entry[bound] = window[bound]
            disagreements.append(Disagreement("window", subject, {winner: claim_map[winner]},
                                              f"valid {window.get('from_height', '')}..{window.get('to_height', '')}",
                                              "window:" + claim.value, window.get("reason", "")))
        if claim.kind == "tag":
            if rule_key[1] in tag_rules:
                entry.update(_apply_tag_rule(tag_rules[rule_key[1]], subject, winner, claim_map, disagreements))
            if not _tag_is_confined(claim.value, entry):
                disagreements.append(Disagreement(
                    "short-tag", subject, claim_map, "dropped", "short-tags",
                    f"under {SHORT_TAG_BYTES} bytes with no known height window or position (no 'windows' or "
                    "'tag_rules' entry): random extranonce bytes would match it"))
                continue
            spelled = _best_spelling(claim, sources, priority)
            pool_tags[winner].append({"tag": spelled, **entry})
        else:
            pool_addresses[winner].append({"address": claim.value, "network": claim.network, **entry})

    doc_pools = []
    memberships = defaultdict(list)
    for m in rules.get("memberships", []):
        memberships[m["pool"]].append({k: v for k, v in m.items() if k in ("family", "from_height", "to_height", "note")})
    for key in sorted(names, key=lambda k: ids[k]):
        pid = ids[key]
        if any(p["id"] == pid for p in doc_pools):
            continue  # several keys folded into one id by an alias rule
        keys = [k for k in names if ids[k] == pid]
        all_names = {n for k in keys for n in names[k].values()}
        name = _pool_display_name(pid, keys, names, rules, priority)
        pool: dict[str, Any] = {"id": pid, "name": name,
                                "slug": _pool_slug(pid, keys, slugs, priority, disagreements),
                                "link": _best_merged(links, keys, priority)}
        former = sorted(n for n in all_names if n != name)
        if former:
            pool["former_names"] = former
        if memberships.get(pid):
            pool["family"] = memberships[pid]
        pool["tags"] = sorted(pool_tags.get(pid, []), key=lambda t: t["tag"])
        pool["addresses"] = sorted(pool_addresses.get(pid, []), key=lambda a: (a["network"], a["address"]))
        doc_pools.append(pool)

    disagreements += _nested_tag_reports(doc_pools)
    document: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "description": description or "Imported by pipeline.attribution.importers from: " + ", ".join(s.id for s in sources),
        "sources": [{"id": s.id, "kind": s.kind, "path": s.path, **({"origin": s.origin} if s.origin else {}),
                     "priority": priority[s.id]} for s in sources],
        "families": rules.get("families", []),
        "pools": doc_pools,
        "resolutions": [d.as_json() for d in disagreements],
    }
    return document, disagreements


_TAG_RULE_FIELDS = ("position", "software", "user_text_after")


def _apply_tag_rule(rule: dict[str, Any], subject: str, winner: str, claim_map: dict[str, list[str]],
                    disagreements: list[Disagreement]) -> dict[str, Any]:
    """The matching conditions a ``tag_rules`` entry adds to a tag (position, software, user text),
    reported with the rule's reason and evidence like every other written rule."""
    fields = {k: rule[k] for k in _TAG_RULE_FIELDS if k in rule}
    if not fields:
        raise SourceListError(f"rule tag_rules[{rule['value']!r}] sets none of {', '.join(_TAG_RULE_FIELDS)}")
    decision = "; ".join(f"{k} {json.dumps(v, ensure_ascii=False)}" for k, v in sorted(fields.items()))
    disagreements.append(Disagreement("tag-rule", subject, {winner: claim_map[winner]}, decision,
                                      "tag-rule:" + rule["value"], rule.get("reason", "")))
    return fields


def _tag_is_confined(tag: str, entry: dict[str, Any]) -> bool:
    """The registry's rule for short tags (pipeline.attribution.registry.Tag.confined)."""
    if len(tag.encode("utf-8")) >= SHORT_TAG_BYTES or "position" in entry:
        return True
    return entry.get("from_height") is not None and entry.get("to_height") is not None


def _nested_tag_reports(pools: list[dict[str, Any]]) -> list[Disagreement]:
    """A tag of one pool inside a tag of another: not a contradiction (the longer tag wins where
    both match), but attribution then rests on that precedence, so it is listed."""
    tags = [(t["tag"], t["tag"].encode("utf-8").lower(), p["id"], t.get("sources", []))
            for p in pools for t in p.get("tags", [])]
    out = []
    for short, short_key, short_pool, short_src in tags:
        for long, long_key, long_pool, long_src in tags:
            if short_pool != long_pool and short_key != long_key and short_key in long_key:
                out.append(Disagreement(
                    "nested-tag", f"tag {short!r} inside tag {long!r}",
                    {short_pool: list(short_src), long_pool: list(long_src)},
                    f"both kept; where both match the longer tag ({long_pool}) wins", "longest-tag",
                    "tag precedence in docs/attribution.md"))
    return out


def _priorities(sources: list[SourceList], rules: dict[str, Any]) -> dict[str, int]:
    """Rank 1 = most trusted. Listed sources first in rule order, then the others in given order."""
    order = [s for s in rules.get("source_priority", []) if any(src.id == s for src in sources)]
    order += [s.id for s in sources if s.id not in order]
    return {sid: i + 1 for i, sid in enumerate(order)}


def _best(per_source: dict[str, str], priority: dict[str, int]) -> str:
    return per_source[min(per_source, key=lambda s: priority.get(s, 99))]


def _best_merged(values: dict[str, dict[str, str]], keys: list[str], priority: dict[str, int]) -> str | None:
    merged: dict[str, str] = {}
    for key in sorted(keys):  # sorted: several names folded into one id give a stable choice
        for src, value in values.get(key, {}).items():
            merged.setdefault(src, value)
    return _best(merged, priority) if merged else None


SLUG_RE = re.compile(r"^[a-z0-9][a-z0-9._-]*$")  # schemas/registry.schema.json, pools[].slug


def _pool_slug(pid: str, keys: list[str], slugs: dict[str, dict[str, str]], priority: dict[str, int],
               disagreements: list[Disagreement]) -> str:
    """The best-ranked list's slug; one a registry cannot hold (mempool's v1 list has 'exx&bw') gives
    way to the next list's valid slug, else the pool id, and the replacement is reported."""
    merged: dict[str, str] = {}
    for key in sorted(keys):
        for src, value in slugs.get(key, {}).items():
            merged.setdefault(src, value)
    ranked = sorted(merged, key=lambda s: priority.get(s, 99))
    valid = [src for src in ranked if SLUG_RE.match(merged[src])]
    chosen = merged[valid[0]] if valid else pid
    if ranked and ranked[0] not in valid:
        bad = merged[ranked[0]]
        disagreements.append(Disagreement(
            "invalid-slug", f"slug {bad!r}", {pid: [src for src in ranked if merged[src] == bad]},
            f"slug {chosen!r}" + (f" from {valid[0]}" if valid else " (the pool id)"), "invalid-slug",
            "a slug must match ^[a-z0-9][a-z0-9._-]*$ (registry schema)"))
    return chosen


def _pool_display_name(pid: str, keys: list[str], names, rules, priority) -> str:
    for entry in rules.get("pools", []):
        if entry["id"] == pid and entry.get("name"):
            return entry["name"]
    merged = {}
    for key in keys:
        for src, name in names[key].items():
            merged.setdefault(src, name)
    return _best(merged, priority)


def _assign_ids(names: dict[str, dict[str, str]], rules: dict[str, Any], priority: dict[str, int]) -> dict[str, str]:
    """Alias-rule keys are ids already; others get the slug of their best-ranked name, made unique."""
    ids: dict[str, str] = {}
    taken: set[str] = {UNKNOWN_POOL_ID}
    for key in sorted(k for k in names if not k.startswith("name:")):
        ids[key] = key
        taken.add(key)
    for key in sorted(k for k in names if k.startswith("name:")):
        base = slugify(_best(names[key], priority))
        candidate, n = base, 2
        while candidate in taken:
            candidate, n = f"{base}-{n}", n + 1
        ids[key] = candidate
        taken.add(candidate)
    return ids


def _decide_owner(claim: _Claim, claim_map: dict[str, list[str]], rule_key, owners, priority, subject,
                  disagreements: list[Disagreement]) -> str | None:
    if len(claim_map) == 1:
        return next(iter(claim_map))
    if rule_key in owners:
        rule = owners[rule_key]
        if rule["pool"] not in claim_map and rule["pool"] is not None:
            raise SourceListError(f"rule owners[{claim.value!r}] names pool {rule['pool']!r}, which no list claims "
                               f"(claims: {sorted(claim_map)})")
        decision = rule["pool"]
        disagreements.append(Disagreement("owner-conflict", subject, claim_map,
                                          f"assigned to {decision}" if decision else "dropped",
                                          "owner:" + claim.value, rule.get("reason", "")))
        return decision
    # Source priority: the pool claimed by the best-ranked list wins; ties (one list naming two
    # pools) go to the lexicographically first id so the result never depends on input order.
    best = min(claim_map, key=lambda pid: (min(priority.get(s, 99) for s in claim_map[pid]), pid))
    top_sources = claim_map[best]
    tie = [pid for pid in claim_map
           if min(priority.get(s, 99) for s in claim_map[pid]) == min(priority.get(s, 99) for s in top_sources)]
    rule = "source-priority" if len(tie) == 1 else "source-priority+id-order"
    disagreements.append(Disagreement("owner-conflict", subject, claim_map, f"assigned to {best}", rule,
                                      f"claimed by {top_sources[0]}, the highest-priority list that names it"
                                      + ("" if len(tie) == 1 else f"; that list itself names {sorted(tie)}")))
    return best


def _best_spelling(claim: _Claim, sources: list[SourceList], priority: dict[str, int]) -> str:
    """Tags equal under ASCII case folding may be spelled differently in different lists; keep the
    spelling of the best-ranked list (cosmetic: matching is case-insensitive)."""
    lowered = claim.value.encode("utf-8").lower()
    spellings = []
    for src in sources:
        for pool in src.pools:
            for tag in pool.tags:
                if tag.encode("utf-8").lower() == lowered:
                    spellings.append((priority.get(src.id, 99), tag))
    return min(spellings)[1] if spellings else claim.value


def _rename_reports(claims, names, ids, display, alias_to_id, rules) -> list[Disagreement]:
    """Name pairs that share a tag or address but never appear together in one list: a likely rename.
    Pairs already folded by an alias rule are reported as resolved by it."""
    shared: dict[tuple[str, str], list[str]] = defaultdict(list)
    for claim in claims.values():
        keys = sorted(claim.pools)
        for i in range(len(keys)):
            for j in range(i + 1, len(keys)):
                shared[(keys[i], keys[j])].append(f"{claim.kind} {claim.value}")
    out = []
    reported_alias: set[str] = set()
    for (a, b), evidence in sorted(shared.items()):
        if set(names[a]) & set(names[b]):
            continue  # both names in one list: an owner conflict, reported per claim
        out.append(Disagreement(
            "rename", f"{display[a]!r} / {display[b]!r}",
            {ids[a]: sorted(names[a]), ids[b]: sorted(names[b])},
            "kept apart; shared claims resolved per claim",
            "rename-unconfirmed",
            f"share {len(evidence)} claim(s) ({', '.join(sorted(evidence)[:3])}) and never appear in the same list"))
    # Alias rules: the rename they encode, once per rule.
    for entry in rules.get("pools", []):
        spelled = {}
        for key, per_source in names.items():
            if ids[key] == entry["id"]:
                for src, name in per_source.items():
                    spelled.setdefault(name, []).append(src)
        if len(spelled) > 1 and entry["id"] not in reported_alias:
            reported_alias.add(entry["id"])
            out.append(Disagreement("rename", " / ".join(repr(n) for n in sorted(spelled)),
                                    {entry["id"]: sorted({s for v in spelled.values() for s in v})},
                                    f"one pool {entry['id']!r} named {entry.get('name') or sorted(spelled)[0]!r}",
                                    "pool:" + entry["id"], entry.get("reason", "")))
    return out


# ----------------------------------------------------------------------------------------- default set

DEFAULT_SOURCES: tuple[tuple[str, str, str], ...] = (
    # (source id, kind, path under the pool-lists folder)
    ("mempool-v2", "mempool-v2", "mining-pools-mempool/pools-v2.json"),
    ("bitcoin-data", "bitcoin-data", "mining-pools-bitcoin-data"),
    ("btccom", "v1", "Blockchain-Known-Pools/pools.json"),
    ("mempool-v1", "v1", "mining-pools-mempool/pools.json"),
    ("known-mining-pools", "v1", "known-mining-pools/pools.json"),
)


def default_lists_dir() -> Path:
    import os

    repo = Path(__file__).resolve().parents[2]
    return Path(os.environ.get("POOLWATCH_SHARED", repo.parent / "shared")) / "pool-lists"


def read_default_sources(lists_dir: Path) -> list[SourceList]:
    out = []
    for source_id, kind, rel in DEFAULT_SOURCES:
        src = read_source(kind, lists_dir / rel, source_id)
        src.path = rel  # relative: the shipped file must not depend on where the lists were
        out.append(src)
    return out


def build_default(lists_dir: Path, rules_path: Path | None = None) -> tuple[dict[str, Any], list[Disagreement]]:
    sources = read_default_sources(lists_dir)
    document, disagreements = merge_sources(
        sources, load_rules(rules_path),
        description="poolwatch default registry, imported by `python -m pipeline.attribution.importers --default` from the "
                    "community lists (MIT) with the rules in pipeline/data/registry_rules.json; see docs/registry.md.")
    parse_registry(document)  # refuse to write a registry that would not load
    return document, disagreements


def write_registry(document: dict[str, Any], path: Path) -> None:
    """Pretty, key-sorted JSON (diffs well); its canonical form is what the version hashes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(document, indent=1, sort_keys=True, ensure_ascii=False) + "\n"
    path.write_text(text, encoding="utf-8")


DOCS_START, DOCS_END = "<!-- resolutions:start -->", "<!-- resolutions:end -->"


def render_resolutions_markdown(document: dict[str, Any]) -> str:
    """The table of every disagreement and its resolution, as docs/registry.md shows it."""
    lines = ["| kind | subject | claims (pool id <- lists) | decision | rule | reason |", "|---|---|---|---|---|---|"]
    for r in document.get("resolutions", []):
        claims = "; ".join(f"{pid} <- {', '.join(srcs)}" for pid, srcs in sorted(r.get("claims", {}).items()))
        cells = [r["kind"], r["subject"], claims, r["decision"], r["rule"], r.get("reason", "")]
        lines.append("| " + " | ".join(c.replace("|", "\\|").replace("\n", " ") for c in cells) + " |")
    return "\n".join(lines)


def update_docs(document: dict[str, Any], docs_path: Path) -> None:
    """Replace the generated resolutions table between the markers in ``docs_path``."""
    text = docs_path.read_text(encoding="utf-8")
    if DOCS_START not in text or DOCS_END not in text:
        raise SourceListError(f"{docs_path}: markers {DOCS_START} / {DOCS_END} not found")
    head, rest = text.split(DOCS_START, 1)
    _, tail = rest.split(DOCS_END, 1)
    docs_path.write_text(f"{head}{DOCS_START}\n{render_resolutions_markdown(document)}\n{DOCS_END}{tail}",
                         encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Generate the default pool registry from the community lists.")
    parser.add_argument("--default", action="store_true", help="build the shipped default registry")
    parser.add_argument("--lists", type=Path, default=None, help="the pool-lists folder (default ../shared/pool-lists)")
    parser.add_argument("--rules", type=Path, default=None, help="resolution rules JSON")
    parser.add_argument("-o", "--output", type=Path,
                        default=Path(__file__).resolve().parent.parent / "data" / "registry.json")
    parser.add_argument("--docs", type=Path, default=None,
                        help="also rewrite the resolutions table in this markdown file (docs/registry.md)")
    args = parser.parse_args(argv)
    if not args.default:
        parser.error("only --default is supported here; use `poolwatch pools import` for other lists")
    document, disagreements = build_default(args.lists or default_lists_dir(), args.rules)
    write_registry(document, args.output)
    if args.docs:
        update_docs(document, args.docs)
    counts: dict[str, int] = defaultdict(int)
    for d in disagreements:
        counts[f"{d.kind} ({d.rule.split(':')[0]})"] += 1
    print(f"wrote {args.output}: {len(document['pools'])} pools, {len(disagreements)} resolutions", file=sys.stderr)
    for k, v in sorted(counts.items()):
        print(f"  {v:4d} {k}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
