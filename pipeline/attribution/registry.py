"""The project's own pool registry: format, loading, validation, canonical form and version hash.

A registry is one JSON document (``schemas/registry.schema.json``). Facts from the community lists
enter it only through ``pipeline.attribution.importers``, which records for every tag and address the lists that
attest it. The registry's version is the content hash of its canonical JSON, so an attribution row
names exactly the definitions that produced it.

Pool ids are short strings of our own (``foundry-usa``), stable across renames (a renamed pool keeps
its id and gains a ``former_names`` entry); ``unknown`` is reserved for unattributed blocks.
Tags are literal byte strings (UTF-8 of ``tag``, or ``tag_hex`` for bytes that are not UTF-8).
A tag may also state where it must stand (``position``), that it names pool software rather than a
pool (``software``), or that what follows it is text the pool's miners choose (``user_text_after``);
docs/registry.md describes the fields and docs/attribution.md what the engine does with them.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from pipeline.chain.networks import NETWORKS

FORMAT = "poolwatch-registry"
FORMAT_VERSION = 1
UNKNOWN_POOL_ID = "unknown"
_ID_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,63}$")


# Consensus caps the coinbase scriptSig at 100 bytes.
MAX_TAG_BYTES = 100
# A tag shorter than this is "short": random bytes contain a given 3-letter ASCII word about once
# per 2^21 offsets (letters fold case), a dozen or so times in the extranonces of the chain's ~10^6
# coinbases, and a 4-letter one once per 2^28, which several such tags add up to. A short tag
# therefore only counts inside a closed height window or at a stated position (``Tag.confined``);
# docs/registry.md. From 5 bytes on the chance is 2^-35 per offset or less.
SHORT_TAG_BYTES = 5
# The shipped registry is ~120 KB; anything far larger is a mistake, not a registry.
MAX_REGISTRY_BYTES = 16 * 1024 * 1024


class RegistryError(ValueError):
    """A registry document that cannot be used; the message names the entry and the field."""


@dataclass(frozen=True)
class HeightRange:
    """Inclusive height range in which a rule is valid; None = open on that side."""

    from_height: int | None = None
    to_height: int | None = None

    def contains(self, height: int) -> bool:
        return (self.from_height is None or height >= self.from_height) and (
            self.to_height is None or height <= self.to_height)

    @property
    def is_open(self) -> bool:
        return self.from_height is None and self.to_height is None


@dataclass(frozen=True)
class TagPosition:
    """Where a tag must start in the scriptSig for it to match.

    Either ``anchor`` bytes (ASCII case folded like tags) end between ``min_gap`` and ``max_gap``
    bytes before the tag's first byte ("after 'ckpool', 1..2 bytes on"), or, without an anchor,
    the tag starts at a byte offset between ``min_gap`` and ``max_gap`` from the scriptSig's start.
    """

    anchor: bytes | None
    min_gap: int
    max_gap: int

    def allows(self, lowered: bytes, start: int) -> bool:
        """Whether a match at ``start`` of the ASCII-lowered scriptSig ``lowered`` stands here."""
        if self.anchor is None:
            return self.min_gap <= start <= self.max_gap
        anchor = self.anchor.lower()
        for gap in range(self.min_gap, self.max_gap + 1):
            end = start - gap
            if end - len(anchor) >= 0 and lowered[end - len(anchor):end] == anchor:
                return True
        return False

    def describe(self) -> str:
        if self.anchor is None:
            return f"at offset {self.min_gap}..{self.max_gap}"
        return f"{self.min_gap}..{self.max_gap} bytes after {_bytes_text(self.anchor)!r}"


def _bytes_text(value: bytes) -> str:
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return "hex:" + value.hex()


@dataclass(frozen=True)
class Tag:
    value: bytes
    heights: HeightRange = HeightRange()
    sources: tuple[str, ...] = ()
    position: TagPosition | None = None
    # The tag names pool software (ckpool writes "ckpool" into every coinbase it builds), not a pool:
    # it is recorded as a candidate but never attributes a block or supports a pool.
    software: bool = False
    # Bytes after this tag, to the end of the scriptSig, are text the pool's miners choose (ViaBTC's
    # "/ViaBTC/Mined by <user>/"): other pools' tags that start there are not evidence.
    user_text_after: bool = False

    @property
    def is_short(self) -> bool:
        return len(self.value) < SHORT_TAG_BYTES

    @property
    def confined(self) -> bool:
        """A short tag may match only inside a closed height window or at a stated position."""
        closed = self.heights.from_height is not None and self.heights.to_height is not None
        return self.position is not None or closed

    @property
    def active(self) -> bool:
        """Whether the engine matches this tag at all (an unconfined short tag never matches)."""
        return not self.is_short or self.confined

    def qualifiers(self) -> str:
        """The tag's matching conditions beyond its bytes and window, for listings and diffs."""
        parts = []
        if self.position is not None:
            parts.append(self.position.describe())
        if self.software:
            parts.append("software signature")
        if self.user_text_after:
            parts.append("user text follows")
        return "; ".join(parts)

    @property
    def text(self) -> str:
        """Display form: the UTF-8 text, or ``hex:...`` for bytes that are not UTF-8."""
        return _bytes_text(self.value)


@dataclass(frozen=True)
class Address:
    address: str
    network: str  # a key of pipeline.chain.networks.NETWORKS
    script: bytes  # scriptPubKey, computed once at load time
    heights: HeightRange = HeightRange()
    sources: tuple[str, ...] = ()


@dataclass(frozen=True)
class FamilyMembership:
    family: str  # id into Registry.families
    heights: HeightRange = HeightRange()


@dataclass(frozen=True)
class Family:
    id: str
    name: str
    link: str | None = None


@dataclass(frozen=True)
class Pool:
    id: str
    name: str
    slug: str
    link: str | None
    tags: tuple[Tag, ...] = ()
    addresses: tuple[Address, ...] = ()
    family: tuple[FamilyMembership, ...] = ()
    former_names: tuple[str, ...] = ()

    def family_at(self, height: int) -> str | None:
        """The family id this pool belonged to at ``height`` (first matching membership)."""
        for membership in self.family:
            if membership.heights.contains(height):
                return membership.family
        return None


@dataclass(frozen=True)
class Registry:
    pools: tuple[Pool, ...]
    families: tuple[Family, ...] = ()
    document: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @cached_property
    def version(self) -> str:
        return registry_version(self.document)

    @cached_property
    def by_id(self) -> dict[str, Pool]:
        return {p.id: p for p in self.pools}

    @cached_property
    def family_names(self) -> dict[str, str]:
        return {f.id: f.name for f in self.families}

    @property
    def resolutions(self) -> list[dict[str, Any]]:
        return list(self.document.get("resolutions", []))

    def canonical_json(self) -> str:
        return canonical_json(self.document)


def canonical_json(document: dict[str, Any]) -> str:
    """Sorted keys, no insignificant whitespace, UTF-8 kept: equal content gives equal text."""
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def registry_version(document: dict[str, Any]) -> str:
    """First 16 hex digits of SHA-256 over the canonical JSON (64 bits: collisions are not a concern
    for the handful of versions a warehouse keeps, and the value stays readable in paths)."""
    return hashlib.sha256(canonical_json(document).encode("utf-8")).hexdigest()[:16]


def default_registry_path() -> Path:
    return Path(__file__).resolve().parent.parent / "data" / "registry.json"


def schema_path() -> Path:
    from pipeline.store.schemas import schemas_dir

    return schemas_dir() / "registry.schema.json"


def load_registry(path: Path | None = None) -> Registry:
    """Read and validate a registry file; None = the default registry shipped in pipeline/data/."""
    path = Path(path) if path is not None else default_registry_path()
    try:
        size = path.stat().st_size
        if size > MAX_REGISTRY_BYTES:
            raise RegistryError(f"registry file {path} is {size:,} bytes, over the limit of "
                                f"{MAX_REGISTRY_BYTES:,} bytes (the shipped registry is ~120 KB): not a registry?")
        raw = path.read_bytes()
    except FileNotFoundError:
        raise RegistryError(f"registry file {path} does not exist") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RegistryError(f"registry file {path} is not UTF-8 text (byte {exc.start}: "
                            f"{raw[exc.start:exc.start + 1]!r})") from None
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise RegistryError(f"registry file {path} is not valid JSON: {exc}") from None
    try:
        return parse_registry(document)
    except RegistryError as exc:
        raise RegistryError(f"{path}: {exc}") from None


def _schema_errors(document: Any) -> list[str]:
    import jsonschema

    schema = json.loads(schema_path().read_text(encoding="utf-8"))
    validator = jsonschema.Draft202012Validator(schema)
    messages = []
    for error in sorted(validator.iter_errors(document), key=lambda e: list(e.absolute_path)):
        messages.append(f"{_describe_path(document, list(error.absolute_path))}: {error.message}")
    return messages


def _describe_path(document: Any, path: list) -> str:
    """`pools[3] (id 'antpool').tags[1].tag` rather than a bare JSON pointer."""
    out, node = "", document
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
            try:
                node = node[part]
            except (IndexError, KeyError, TypeError):
                node = None
            if isinstance(node, dict):
                if isinstance(node.get("id"), str):
                    out += f" (id {node['id']!r})"
                else:
                    label = node.get("address") or node.get("tag") or node.get("tag_hex")
                    if label is not None:
                        out += f" ({label!r})"
        else:
            out += f".{part}" if out else str(part)
            node = node.get(part) if isinstance(node, dict) else None
    return out or "(document)"


def parse_registry(document: Any, *, strict: bool = True) -> Registry:
    """Validate (JSON Schema, then the rules a schema cannot express) and build a Registry.

    ``strict`` refuses short tags (under ``SHORT_TAG_BYTES``) that state neither a closed height
    window nor a position. Registry versions already stored in a warehouse are reloaded with
    ``strict=False`` so they stay readable: the engine never matches such a tag, whatever registry
    holds it."""
    errors = _schema_errors(document)
    if errors:
        raise RegistryError("invalid registry: " + "; ".join(errors[:20])
                            + (f"; ... {len(errors) - 20} more" if len(errors) > 20 else ""))
    families = tuple(Family(f["id"], f["name"], f.get("link")) for f in document.get("families", []))
    family_ids = {f.id for f in families}
    pools: list[Pool] = []
    seen_ids: dict[str, int] = {}
    problems: list[str] = []
    for i, raw in enumerate(document["pools"]):
        where = f"pools[{i}] (id {raw['id']!r})"
        if raw["id"] == UNKNOWN_POOL_ID:
            problems.append(f"{where}.id: {UNKNOWN_POOL_ID!r} is reserved for unattributed blocks")
        if raw["id"] in seen_ids:
            problems.append(f"{where}.id: duplicate of pools[{seen_ids[raw['id']]}]")
        seen_ids.setdefault(raw["id"], i)
        tags = []
        for j, t in enumerate(raw.get("tags", [])):
            value = _tag_bytes(t, f"{where}.tags[{j}]", problems)
            heights = _heights(t, f"{where}.tags[{j}]", problems)
            position = _position(t.get("position"), f"{where}.tags[{j}].position", problems)
            if value is not None:
                tag = Tag(value, heights, tuple(t.get("sources", [])), position, bool(t.get("software", False)),
                          bool(t.get("user_text_after", False)))
                if strict and not tag.active:
                    problems.append(
                        f"{where}.tags[{j}]: {tag.text!r} is {len(value)} bytes, shorter than {SHORT_TAG_BYTES}: "
                        "random extranonce bytes would match it; give it a closed height window (from_height "
                        "and to_height) or a position (docs/registry.md), or drop it")
                tags.append(tag)
        addresses = []
        for j, a in enumerate(raw.get("addresses", [])):
            entry = f"{where}.addresses[{j}] ({a['address']!r})"
            heights = _heights(a, entry, problems)
            script = _address_script(a["address"], a["network"], entry, problems)
            if script is not None:
                addresses.append(Address(a["address"], a["network"], script, heights, tuple(a.get("sources", []))))
        memberships = []
        for j, m in enumerate(raw.get("family", [])):
            if m["family"] not in family_ids:
                problems.append(f"{where}.family[{j}].family: {m['family']!r} is not declared in families")
            memberships.append(FamilyMembership(m["family"], _heights(m, f"{where}.family[{j}]", problems)))
        pools.append(Pool(raw["id"], raw["name"], raw.get("slug") or raw["id"], raw.get("link"), tuple(tags),
                          tuple(addresses), tuple(memberships), tuple(raw.get("former_names", []))))
    problems += _duplicate_rule_problems(pools)
    if problems:
        raise RegistryError("invalid registry: " + "; ".join(problems[:20])
                            + (f"; ... {len(problems) - 20} more" if len(problems) > 20 else ""))
    return Registry(tuple(pools), families, document)


def _tag_bytes(entry: dict, where: str, problems: list[str]) -> bytes | None:
    if ("tag" in entry) == ("tag_hex" in entry):
        problems.append(f"{where}: give exactly one of 'tag' and 'tag_hex'")
        return None
    if "tag" in entry:
        value = entry["tag"].encode("utf-8")
    else:
        try:
            value = bytes.fromhex(entry["tag_hex"])
        except ValueError:
            problems.append(f"{where}.tag_hex: {entry['tag_hex']!r} is not hex")
            return None
    if len(value) > MAX_TAG_BYTES:
        # A coinbase scriptSig holds at most 100 bytes: a longer tag could never match anything.
        problems.append(f"{where}.tag: {len(value)} bytes, longer than any coinbase scriptSig ({MAX_TAG_BYTES} bytes)")
        return None
    if len(value) < 3:
        # A 1-2 byte tag would match random extranonce bytes in a large share of all coinbases.
        problems.append(f"{where}.tag: {value!r} is shorter than 3 bytes and would match by chance")
        return None
    return value


def _position(raw: dict | None, where: str, problems: list[str]) -> TagPosition | None:
    """``{"after": text | "after_hex": hex, "gap": [lo, hi]}`` or ``{"offset": [lo, hi]}`` (the
    schema has checked the shape)."""
    if raw is None:
        return None
    if "offset" in raw:
        lo, hi = raw["offset"]
        anchor = None
    else:
        lo, hi = raw["gap"]
        if "after" in raw:
            anchor = raw["after"].encode("utf-8")
        else:
            try:
                anchor = bytes.fromhex(raw["after_hex"])
            except ValueError:
                problems.append(f"{where}.after_hex: {raw['after_hex']!r} is not hex")
                return None
        if len(anchor) < 3:
            # The anchor is what makes a short tag improbable in random bytes; 1-2 bytes do not.
            problems.append(f"{where}: anchor {anchor!r} is shorter than 3 bytes")
            return None
    if lo > hi:
        problems.append(f"{where}: {lo} is above {hi}")
        return None
    return TagPosition(anchor, lo, hi)


def _heights(entry: dict, where: str, problems: list[str]) -> HeightRange:
    lo, hi = entry.get("from_height"), entry.get("to_height")
    if lo is not None and hi is not None and lo > hi:
        problems.append(f"{where}.from_height: {lo} is above to_height {hi}")
    return HeightRange(lo, hi)


def _address_script(address: str, network: str, where: str, problems: list[str]) -> bytes | None:
    from pipeline.chain.scripts import address_to_script

    if network not in NETWORKS:
        problems.append(f"{where}.network: unknown network {network!r}; expected one of {sorted(NETWORKS)}")
        return None
    try:
        script, encoded_for = address_to_script(address)
    except ValueError as exc:
        problems.append(f"{where}.address: {exc}")
        return None
    if not _encoded_for(address, encoded_for, NETWORKS[network]):
        problems.append(f"{where}.network: the address is encoded for {encoded_for.name!r}, not {network!r}")
        return None
    return script


def _encoded_for(address: str, parsed_as, network) -> bool:
    """Whether the address's encoding belongs to ``network``. Networks share encodings (test,
    testnet4 and signet all use tb1/m/n/2; regtest shares the base58 versions but has bcrt1), so
    bech32 addresses compare by prefix and base58 addresses by version bytes."""
    lowered = address.lower()
    if any(lowered.startswith(n.bech32_hrp + "1") for n in NETWORKS.values()):
        return lowered.startswith(network.bech32_hrp + "1")
    return (parsed_as.p2pkh_version, parsed_as.p2sh_version) == (network.p2pkh_version, network.p2sh_version)


def _duplicate_rule_problems(pools: Iterable[Pool]) -> list[str]:
    """The same tag or address in two pools with overlapping height ranges makes attribution ambiguous by
    construction: the registry must resolve it (windows or removal), attribution must not guess."""
    problems: list[str] = []
    claims: dict[tuple, list[tuple[str, HeightRange]]] = {}
    for pool in pools:
        for tag in pool.tags:
            claims.setdefault(("tag", tag.value.lower()), []).append((pool.id, tag.heights))
        for addr in pool.addresses:
            claims.setdefault(("address", addr.network, addr.script), []).append((pool.id, addr.heights))
    for key, owners in claims.items():
        for a in range(len(owners)):
            for b in range(a + 1, len(owners)):
                (pa_, wa), (pb, wb) = owners[a], owners[b]
                if _overlap(wa, wb):
                    what = (f"tag {key[1]!r} (case-insensitive)" if key[0] == "tag"
                            else f"address script {key[2].hex()} on {key[1]}")
                    where = "twice in the same pool" if pa_ == pb else f"in pools {pa_!r} and {pb!r}"
                    problems.append(f"{what} appears {where} with overlapping height ranges")
    return problems


def _overlap(a: HeightRange, b: HeightRange) -> bool:
    lo = max(a.from_height if a.from_height is not None else -1, b.from_height if b.from_height is not None else -1)
    hi = min(a.to_height if a.to_height is not None else 1 << 62, b.to_height if b.to_height is not None else 1 << 62)
    return lo <= hi


def diff_registries(old: Registry, new: Registry) -> dict[str, list[str]]:
    """Human-readable rule-level differences: pools added/removed/renamed, tags and addresses moved."""
    def rules(reg: Registry) -> dict[tuple, str]:
        out = {}
        for p in reg.pools:
            for t in p.tags:
                # A changed position or role changes what the tag matches: it shows as -old/+new.
                text = t.text + (f" ({t.qualifiers()})" if t.qualifiers() else "")
                out[("tag", text, t.heights)] = p.id
            for a in p.addresses:
                out[("address", a.address, a.network, a.heights)] = p.id
        return out

    old_rules, new_rules = rules(old), rules(new)
    changes: dict[str, list[str]] = {"pools": [], "rules": []}
    for pid in sorted(set(old.by_id) - set(new.by_id)):
        changes["pools"].append(f"- pool {pid} ({old.by_id[pid].name})")
    for pid in sorted(set(new.by_id) - set(old.by_id)):
        changes["pools"].append(f"+ pool {pid} ({new.by_id[pid].name})")
    for pid in sorted(set(old.by_id) & set(new.by_id)):
        if old.by_id[pid].name != new.by_id[pid].name:
            changes["pools"].append(f"~ pool {pid} renamed {old.by_id[pid].name!r} -> {new.by_id[pid].name!r}")
    for key in sorted(set(old_rules) | set(new_rules), key=repr):
        o, n = old_rules.get(key), new_rules.get(key)
        if o == n:
            continue
        label = f"{key[0]} {key[1]!r}" + (f" [{_heights_text(key[-1])}]" if not key[-1].is_open else "")
        if o is None:
            changes["rules"].append(f"+ {label} -> {n}")
        elif n is None:
            changes["rules"].append(f"- {label} (was {o})")
        else:
            changes["rules"].append(f"~ {label}: {o} -> {n}")
    return changes


def _heights_text(w: HeightRange) -> str:
    return f"{'' if w.from_height is None else w.from_height}..{'' if w.to_height is None else w.to_height}"
