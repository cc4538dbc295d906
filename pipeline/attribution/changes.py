"""Which stored blocks a registry update can attribute differently; every other block keeps its rows.

A block's rows (``attributions`` and ``attribution_candidates``) are a function of its coinbase
(scriptSig, value-bearing output scripts, height, time) and of the registry as the compiled
``Matcher`` reads it, and only through three doors:

- the tag rules filed under each tag the scriptSig contains (ASCII-lowered key): the rules' pools,
  tags (windows, positions, software and user-text flags) and rule texts, in their order, and the
  tags inside that tag (``Matcher._inner``, in its order). The first offsets the search reports for
  the tags a scriptSig contains do not depend on other tags (each is the tag's first occurrence);
- the address rules filed under each script a value-bearing output pays;
- the chosen pool's name and family (memberships, and whether the family exists).

So a block none of whose tag keys, paid scripts or chosen pool changed between the two matchers
gets byte-identical rows under the new registry (``reattribute`` relabels them), and only the
others are attributed again. The comparison is conservative: any difference in a rule's fields,
provenance included, counts as a change (more blocks attributed again, never fewer).
tests/test_reattribute.py checks the result against attributing every block from scratch for
added, removed, re-windowed, moved and reordered tags and addresses, renames and family changes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from pipeline.attribution.engine import Matcher
from pipeline.attribution.registry import Registry


@dataclass(frozen=True)
class RuleChanges:
    """What differs between the matchers of two registries, keyed as blocks are searched."""

    tags: frozenset[bytes]      # lowered tag keys whose rules (or inner tags) differ
    scripts: frozenset[str]     # output scripts (hex) whose address rules differ
    pools: frozenset[str]       # pool ids whose name or family differ

    @property
    def none(self) -> bool:
        return not (self.tags or self.scripts or self.pools)

    def describe(self) -> str:
        return (f"{len(self.tags)} tag(s), {len(self.scripts)} payout script(s) and {len(self.pools)} pool "
                "name(s)/families changed")


def _tag_entry(matcher: Matcher, key: bytes) -> tuple[Any, ...]:
    rules = tuple((r.pool.id, r.tag, r.rule) for r in matcher.tag_rules.get(key, ()))
    return rules, matcher._inner.get(key, ())


def _script_entry(matcher: Matcher, script: str) -> tuple[Any, ...]:
    return tuple((r.pool.id, r.address, r.rule) for r in matcher.by_script.get(script, ()))


def _presentation(registry: Registry, pool_id: str) -> tuple[Any, ...] | None:
    """What an attribution row shows of its chosen pool besides the id."""
    pool = registry.by_id.get(pool_id)
    if pool is None:
        return None
    return pool.name, tuple((m, m.family in registry.family_names) for m in pool.family)


def rule_changes(old: Matcher, new: Matcher) -> RuleChanges:
    """The tag keys, scripts and pools whose rules differ between ``old`` and ``new`` (same chain)."""
    if old.network != new.network:
        raise ValueError(f"matchers for different networks ({old.network}, {new.network}) cannot be compared")
    tags = frozenset(k for k in set(old.tag_rules) | set(new.tag_rules) if _tag_entry(old, k) != _tag_entry(new, k))
    scripts = frozenset(s for s in set(old.by_script) | set(new.by_script)
                        if _script_entry(old, s) != _script_entry(new, s))
    ids = set(old.registry.by_id) | set(new.registry.by_id)
    pools = frozenset(p for p in ids if _presentation(old.registry, p) != _presentation(new.registry, p))
    return RuleChanges(tags, scripts, pools)


def hex_pattern(keys: frozenset[bytes]) -> str:
    """An RE2 pattern that finds any of ``keys`` (ASCII-lowered tags) in a scriptSig's hex text
    exactly where the engine finds it in the scriptSig's ASCII-lowered bytes: only at byte
    boundaries (an even number of hex digits before it), an ASCII letter as either case's byte,
    hex digits of either case. One vectorised pass over a chunk's scriptSigs (Arrow runs RE2,
    linear time) instead of decoding each in Python."""
    def byte(b: int) -> str:
        if ord("a") <= b <= ord("z"):
            return f"(?:{b:02x}|{b - 32:02x})"
        return f"{b:02x}"

    alternatives = "|".join("".join(byte(b) for b in key) for key in sorted(keys))
    return f"(?i)^(?:[0-9a-f]{{2}})*?(?:{alternatives})"


def affected_heights(changes: RuleChanges, blocks: pa.Table, outputs: pa.Table, attributions: pa.Table) -> pa.Array:
    """Heights (int32, sorted, unique) of the blocks whose rows ``changes`` can alter: a changed tag
    in the scriptSig, a changed script paid with value, or a chosen pool (``attributions``, the
    current rows) whose name or family changed. ``blocks`` needs height and
    coinbase_script_sig_hex (only read when tags changed), ``outputs`` height, value_sat and
    script_hex, ``attributions`` height and pool_id."""
    found: list[pa.Array] = []
    if changes.tags and blocks.num_rows:
        carrying = pc.match_substring_regex(blocks["coinbase_script_sig_hex"], hex_pattern(changes.tags))
        found.append(blocks.filter(carrying)["height"].combine_chunks().cast(pa.int32()))
    if changes.scripts and outputs.num_rows:
        paid = pc.and_(pc.greater(outputs["value_sat"], 0),
                       pc.is_in(outputs["script_hex"], value_set=pa.array(sorted(changes.scripts), pa.string())))
        found.append(outputs.filter(paid)["height"].combine_chunks().cast(pa.int32()))
    if changes.pools and attributions.num_rows:
        chosen = pc.is_in(attributions["pool_id"], value_set=pa.array(sorted(changes.pools), pa.string()))
        found.append(attributions.filter(chosen)["height"].combine_chunks().cast(pa.int32()))
    if not found:
        return pa.array([], pa.int32())
    return pc.unique(pa.chunked_array(found, pa.int32())).sort()
