"""Mainnet eras: which heights had which block shapes, for the benchmark chain and the projection.

One table, used twice: ``benchmarks/chain.py`` builds one segment of regtest blocks per era with
the era's mean size (and witness share), and ``benchmarks/projection.py`` multiplies each era's
measured per-block cost by its number of mainnet blocks. Every number here is an assumption stated
with where it comes from (``source``); changing it changes the chain's cache key and the projection.

Mean sizes: the real mainnet blocks in ``../shared/fixtures/mainnet`` (MANIFEST.tsv: size per
height) anchor each era, and published daily averages set the level where fixtures are few
(blockchain.com's average-block-size series as quoted in the press: ~1.2 MB mean from 2020-01-01
to 2022-11-30 and ~1.7 MB over 2023; ~1.62 MB in July 2025). Cross-check: the sizes below sum to
~463 GB of blocks at height 778,000 (press, from blockchain.com: 459.5 GB on 2023-02-27) and
~692 GB at 925,000.
"""

from __future__ import annotations

from dataclasses import dataclass

MAINNET_TIP = 925_000  # about November 2025
SEGWIT_HEIGHT = 481_824  # first block with segwit rules enforced (2017-08-24)


@dataclass(frozen=True)
class Era:
    """A stretch of mainnet heights [first, last] and the block shape the benchmark gives it.

    ``mean_bytes``: mean serialized block size (witness included). ``segwit_share``: share of the
    non-coinbase transactions that spend segwit outputs (carry witness data); 0 means no witness
    anywhere and no witness commitment (as every block before segwit), so the block-file path
    reads header and coinbase only. ``max_weight``: a cap on the built blocks' weight (the 2023+
    blocks are full by weight, not by bytes). ``two_key_share``: share of the segwit spends whose
    witness has two signature-sized and two key-sized items (multisig-like) instead of one of each:
    it sets the witness share of the bytes, hence bytes per weight unit."""

    name: str
    first: int
    last: int
    mean_bytes: int
    segwit_share: float
    max_weight: int
    two_key_share: float
    dates: str
    source: str

    @property
    def blocks(self) -> int:
        return self.last - self.first + 1

    @property
    def witness(self) -> bool:
        return self.segwit_share > 0


MAX_BLOCK_WEIGHT = 4_000_000

ERAS: tuple[Era, ...] = (
    Era("early", 0, 199_999, 20_000, 0.0, MAX_BLOCK_WEIGHT, 0.0, "2009 - Sep 2012",
        "fixtures: 215 B (height 1), 18.7 kB (169,482); blocks under ~50 kB until 2012"),
    Era("growth", 200_000, 359_999, 250_000, 0.0, MAX_BLOCK_WEIGHT, 0.0, "Sep 2012 - Jun 2015",
        "fixtures: 40 kB (227,836, 2013), 284 kB (300,025, 2014), 163 kB (361,582, 2015)"),
    Era("legacy-full", 360_000, SEGWIT_HEIGHT - 1, 850_000, 0.0, MAX_BLOCK_WEIGHT, 0.0, "Jun 2015 - Aug 2017",
        "fixtures: 381-1,000 kB (363,703 to 481,829; 7 of 9 blocks >= 0.6 MB); the 1 MB cap"),
    Era("segwit", SEGWIT_HEIGHT, 769_999, 1_050_000, 0.5, MAX_BLOCK_WEIGHT, 0.0, "Aug 2017 - Dec 2022",
        "fixtures: 1.03-1.42 MB (514,485 to 713,126), 537 kB (739,990); ~1.2 MB mean 2020-2022 "
        "(blockchain.com, in the press), less in 2018-2019"),
    Era("current", 770_000, MAINNET_TIP - 1, 1_560_000, 1.0, 3_930_000, 0.25, "2023 - 2025",
        "fixture 1.58 MB (866,342, 2024); ~1.7 MB mean over 2023, ~1.62 MB in July 2025 (blockchain.com, in "
        "the press); blocks full by weight (~3.9-4.0 MWU)"),
)


def era(name: str) -> Era:
    for e in ERAS:
        if e.name == name:
            return e
    raise KeyError(f"no era {name!r}; eras: {', '.join(e.name for e in ERAS)}")


def mainnet_bytes(eras: tuple[Era, ...] = ERAS, up_to: int | None = None) -> int:
    """Total block bytes of mainnet up to height ``up_to`` (inclusive; default: every era) under
    these assumptions."""
    total = 0
    for e in eras:
        last = e.last if up_to is None else min(e.last, up_to)
        if last >= e.first:
            total += (last - e.first + 1) * e.mean_bytes
    return total


__all__ = ["ERAS", "Era", "MAINNET_TIP", "MAX_BLOCK_WEIGHT", "SEGWIT_HEIGHT", "era", "mainnet_bytes"]
