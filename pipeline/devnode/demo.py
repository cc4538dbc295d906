"""A realistic demo plan: which pool mines each block of a regtest chain, with the registry's real
tags and payout scripts (``demo_specs``), for ``poolwatch demo``, the devnode, tests and benchmarks.

See docs/regtest.md.
"""

from __future__ import annotations

import logging
import random
import re
from dataclasses import dataclass
from typing import Any

from pipeline.devnode.blocks import CoinbaseSpec
from pipeline.devnode.chains import is_p2sh

log = logging.getLogger(__name__)




@dataclass(frozen=True)
class DemoPool:
    """A pool the demo chain imitates. ``weight`` is a demo parameter, not a claim about the pool.

    The weights approximate recent public hashrate-share estimates so the demo's charts look
    familiar; ``names`` are normalized (lowercase alphanumerics) slugs/names to find the pool in the
    registry; ``extra_payouts`` (min, max) adds OCEAN-style direct miner payouts; ``merge_mining``
    adds a zero-value RSK-style merge-mining OP_RETURN to most of its blocks.
    """
    key: str
    names: tuple[str, ...]
    weight: float
    extra_payouts: tuple[int, int] = (0, 0)
    merge_mining: bool = False


DEMO_POOLS: tuple[DemoPool, ...] = (
    DemoPool("foundry-usa", ("foundryusa", "foundryusapool", "foundry"), 30.0, merge_mining=True),
    DemoPool("antpool", ("antpool",), 18.0, merge_mining=True),
    DemoPool("viabtc", ("viabtc",), 12.0, merge_mining=True),
    DemoPool("f2pool", ("f2pool",), 10.0, merge_mining=True),
    DemoPool("mara", ("marapool", "mara", "marathon"), 5.0),
    DemoPool("spiderpool", ("spiderpool",), 4.5, merge_mining=True),
    DemoPool("luxor", ("luxor",), 3.5),
    DemoPool("secpool", ("secpool",), 3.0),
    DemoPool("binance-pool", ("binancepool", "binance"), 3.0, merge_mining=True),
    DemoPool("braiins", ("braiinspool", "braiins", "slushpool", "slush"), 2.5, merge_mining=True),
    DemoPool("ocean", ("ocean", "oceanxyz"), 2.0, extra_payouts=(3, 12)),
    DemoPool("sbi-crypto", ("sbicrypto",), 1.5),
    DemoPool("ultimus", ("ultimuspool", "ultimus"), 1.0),
    DemoPool("poolin", ("poolin",), 0.8),
    # Pools of the registry's legal families (legal_links.json): BTC.com and Bitdeer belong to BIT
    # Mining since 2021-04, NovaBlock to Poolin since 2021-02, so the demo's legal level joins them.
    DemoPool("btc-com", ("btccom",), 3.0),
    DemoPool("bitdeer", ("bitdeer",), 2.0),
    DemoPool("novablock", ("novablock",), 1.5),
)
# The demo's stratum capture (``demo_capture``): which pools send the same block template. It copies
# the pattern of the real mempool.space capture at height 890448 (docs/templates.md): AntPool,
# Binance Pool, Braiins Pool, Poolin and ULTIMUSPOOL on one template, Luxor and SECPOOL on another.
# F2Pool and SpiderPool share one at a single height only: a link below the default threshold.
DEMO_TEMPLATE_SOURCES: dict[str, str] = {
    "antpool": "antpool", "binance-pool": "antpool", "braiins": "antpool", "poolin": "antpool",
    "ultimus-pool": "antpool", "luxor": "luxor", "secpool": "luxor",
}
DEMO_ONCE_SHARED = ("f2pool", "spiderpool")
UNKNOWN_WEIGHT = 1.5  # blocks with a random tag and payout, attributable to no registry pool
TAGLESS_SHARE = 0.05  # share of a pool's blocks without its tag (attribution by address only)
WITNESS_COMMITMENT_SHARE = 0.95  # blocks with a witness commitment output (mainnet: nearly all)
RSK_PREFIX = b"RSKBLOCK:"


def _normalize(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def _timeless(rules: list[Any]) -> list[Any]:
    """Prefer rules valid at every height: registry windows are mainnet heights, and a rule limited
    to e.g. heights 742802.. would not apply to a young regtest chain. Then rules still valid
    today (no end), then all of them."""
    def window(r: Any) -> Any:
        return getattr(r, "heights", None)
    open_ = [r for r in rules if window(r) is None or getattr(window(r), "is_open", False)]
    if open_:
        return open_
    current = [r for r in rules if getattr(window(r), "to_height", None) is None]
    return current or rules


def _pool_tags(pool: Any) -> list[bytes]:
    raw = getattr(pool, "tags", ()) or ()
    if isinstance(raw, dict):
        raw = raw.values()
    tags = []
    for t in _timeless(list(raw)):
        value = getattr(t, "value", t)  # pipeline.attribution.registry.Tag or plain bytes/str
        b = value.encode("utf-8") if isinstance(value, str) else bytes(value)
        if b and len(b) <= 60:  # leave room for the height and extranonce within 100 bytes
            tags.append(b)
    return tags


def _address_text(item: Any) -> str:
    if isinstance(item, str):
        return item
    if isinstance(item, (tuple, list)) and item and isinstance(item[0], str):
        return item[0]
    addr = getattr(item, "address", None)
    if isinstance(addr, str):
        return addr
    raise ValueError(f"cannot read an address from {item!r}")


def _address_to_script(address: str) -> bytes:
    from pipeline.chain.scripts import address_to_script

    return address_to_script(address)[0]


def _pool_scripts(pool: Any, allow_p2sh: bool = True) -> list[bytes]:
    scripts = []
    for item in _timeless(list(getattr(pool, "addresses", ()) or ())):
        try:
            # pipeline.attribution.registry.Address carries its script already; plain strings are converted.
            script = getattr(item, "script", None) or _address_to_script(_address_text(item))
        except ValueError as exc:
            log.debug("demo: skipping an address of %s: %s", getattr(pool, "slug", pool), exc)
            continue
        if allow_p2sh or not is_p2sh(script):
            scripts.append(script)
    return scripts


def random_script(rng: random.Random, kind: str | None = None, allow_p2sh: bool = True) -> bytes:
    """A random standard-looking scriptPubKey (p2pkh, p2sh, p2wpkh, p2wsh or p2tr)."""
    kinds = ("p2pkh", "p2sh", "p2wpkh", "p2wsh", "p2tr") if allow_p2sh else ("p2pkh", "p2wpkh", "p2wsh", "p2tr")
    kind = kind or rng.choice(kinds)
    h20, h32 = rng.randbytes(20), rng.randbytes(32)
    return {
        "p2pkh": b"\x76\xa9\x14" + h20 + b"\x88\xac",
        "p2sh": b"\xa9\x14" + h20 + b"\x87",
        "p2wpkh": b"\x00\x14" + h20,
        "p2wsh": b"\x00\x20" + h32,
        "p2tr": b"\x51\x20" + h32,
    }[kind]


@dataclass
class _DemoEntry:
    key: str
    weight: float
    tags: list[bytes]
    scripts: list[bytes]
    extra_payouts: tuple[int, int]
    merge_mining: bool


def _registry_pools(registry: Any) -> list[Any]:
    pools = getattr(registry, "pools", None)
    if pools is None:
        raise TypeError(f"{type(registry).__name__} has no .pools; expected a pipeline.attribution.registry.Registry")
    return list(pools.values()) if isinstance(pools, dict) else list(pools)


def _match_registry(registry: Any, rng: random.Random, allow_p2sh: bool) -> list[_DemoEntry]:
    pools = _registry_pools(registry)
    entries = []
    for demo in DEMO_POOLS:
        found = next((p for p in pools
                      if _normalize(str(getattr(p, "slug", ""))) in demo.names
                      or _normalize(str(getattr(p, "name", ""))) in demo.names), None)
        if found is None:
            log.info("demo: registry has no pool matching %s; its %.1f%% goes to the others", demo.key, demo.weight)
            continue
        tags, scripts = _pool_tags(found), _pool_scripts(found, allow_p2sh)
        if not tags and not scripts:
            log.info("demo: registry pool %s has neither usable tags nor addresses; skipped", demo.key)
            continue
        if not scripts:
            # Pools listed by tag only still pay somewhere: a fixed address of their own per chain.
            scripts = [random_script(rng, "p2wpkh")]
        entries.append(_DemoEntry(str(getattr(found, "slug", demo.key)), demo.weight, tags, scripts,
                                  demo.extra_payouts, demo.merge_mining))
    if not entries:
        raise ValueError("the registry contains none of the demo pools "
                         f"({', '.join(d.key for d in DEMO_POOLS)}); cannot plan a demo chain")
    return entries


def _unknown_tag(rng: random.Random, known: list[bytes]) -> bytes:
    alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
    for _ in range(1000):
        word = "".join(rng.choice(alphabet) for _ in range(rng.randint(5, 12)))
        tag = rng.choice((f"/{word}/", f"{word} solo", f"/{word}/{rng.randint(1, 999)}/")).encode()
        # Must not accidentally carry a registry tag (attribution would then be "right" by luck).
        if not any(k.lower() in tag.lower() for k in known):
            return tag
    # Only a registry with a tag like "/" or "a" can get here; an untagged unknown block is still fine.
    return b""


def demo_specs(registry: Any, n_blocks: int, seed: int = 7, *, allow_p2sh: bool = True) -> list[CoinbaseSpec]:
    """A realistic plan of ``n_blocks`` coinbases: which pool mines each block, by DEMO_POOLS weights.

    ``registry`` is ``pipeline.attribution.registry.load_registry()`` or anything with ``.pools`` whose items
    have ``slug`` (and ``name``), ``tags`` (Tag objects with ``.value``, bytes or str) and
    ``addresses`` (Address objects with ``.script``, address strings or (address, network) pairs).
    Rules valid at all heights are preferred over height-windowed ones. Tags and payout scripts come from it;
    pools missing from it are left out and the rest renormalized. Deterministic for a seed. Each
    spec's ``pool`` names the registry slug it imitates, or None for an unknown miner.

    ``allow_p2sh=False`` (needed for the Bitcoin SV node, which rejects P2SH outputs) leaves out
    the registry's P2SH addresses: pools known only by them are then paid to a fixed non-P2SH
    script of their own and recognizable by tag only.
    """
    if n_blocks < 0:
        raise ValueError(f"n_blocks must be >= 0, got {n_blocks}")
    rng = random.Random(seed)
    entries = _match_registry(registry, rng, allow_p2sh)
    known_tags = [t for p in _registry_pools(registry) for t in _pool_tags(p)]
    choices: list[_DemoEntry | None] = [*entries, None]
    weights = [e.weight for e in entries] + [UNKNOWN_WEIGHT]
    specs = []
    for _ in range(n_blocks):
        entry = rng.choices(choices, weights)[0]
        extranonce = rng.randbytes(rng.choice((4, 8, 8, 12)))
        extras: list[tuple[bytes, int]] = []
        if entry is None:
            tag = _unknown_tag(rng, known_tags)
            payouts = [(random_script(rng, allow_p2sh=allow_p2sh), 1)]
            pool = None
        else:
            pool = entry.key
            tag = b"" if entry.tags and entry.scripts and rng.random() < TAGLESS_SHARE else \
                (rng.choice(entry.tags) if entry.tags else b"")
            # Mostly the pool's first address, sometimes another one it is known for.
            main = entry.scripts[0] if rng.random() < 0.8 else rng.choice(entry.scripts)
            payouts = [(main, 100)]
            lo, hi = entry.extra_payouts
            for _ in range(rng.randint(lo, hi) if hi else 0):
                payouts.append((random_script(rng, allow_p2sh=allow_p2sh), rng.randint(50, 2000)))
            if entry.merge_mining and rng.random() < 0.9:
                extras.append((b"\x6a\x29" + RSK_PREFIX + rng.randbytes(32), 0))
        specs.append(CoinbaseSpec(tag=tag, payouts=payouts, extranonce=extranonce, extra_outputs=extras,
                                  witness_commitment=rng.random() < WITNESS_COMMITMENT_SHARE,
                                  tx_version=rng.choice((1, 2)), pool=pool))
    return specs


def demo_capture(registry: Any, chain: list[tuple[int, str]], heights: int = 6, seed: int = 7) -> list[dict[str, Any]]:
    """A made-up stratum capture (poolwatch's JSON-lines jobs, docs/templates.md) for the last
    ``heights`` blocks of a demo chain (``chain``: (height, hash) of the stored blocks, in order):
    every demo pool sends one job per height, on the stored previous block, with its own coinbase
    (its tag and payout) and the merkle branches of the template it mines on
    (``DEMO_TEMPLATE_SOURCES``; the others each their own). Like the chain, an illustration: it
    gives the demo's inferred level the template links a real capture gives."""
    import hashlib

    from pipeline.devnode.blocks import bip34_height_push

    if len(chain) < 2:
        raise ValueError("a demo capture needs a chain of at least two blocks")
    entries = _match_registry(registry, random.Random(seed), allow_p2sh=True)
    by_height = dict(chain)
    targets = [h for h, _ in chain[-heights:] if h - 1 in by_height]
    jobs = []
    for i, height in enumerate(targets):
        for entry in entries:
            source = DEMO_TEMPLATE_SOURCES.get(entry.key, entry.key)
            if entry.key in DEMO_ONCE_SHARED and i == len(targets) - 1:
                source = DEMO_ONCE_SHARED[0]
            seed_text = f"demo-template|{source}|{height}"
            n = 3 + int(hashlib.sha256(seed_text.encode()).hexdigest(), 16) % 9  # 3..11 branches
            branches = [hashlib.sha256(f"{seed_text}|{k}".encode()).hexdigest() for k in range(n)]
            tag = (entry.tags[0] if entry.tags else b"")[:40]
            script_start = bip34_height_push(height) + tag
            coinbase1 = (b"\x01\x00\x00\x00\x01" + bytes(32) + b"\xff" * 4
                         + bytes([len(script_start) + 8]) + script_start)  # + 8 bytes of extranonces
            script = entry.scripts[0]
            coinbase2 = (b"\xff" * 4 + b"\x01" + (312_500_000).to_bytes(8, "little") + bytes([len(script)]) + script
                         + bytes(4))
            jobs.append({"pool": entry.key, "height": height, "prevhash": by_height[height - 1],
                         "coinbase1": coinbase1.hex(), "coinbase2": coinbase2.hex(), "merkle_branches": branches,
                         "time": 1_700_000_000 + 600 * height, "source": "poolwatch demo (made up)"})
    return jobs
