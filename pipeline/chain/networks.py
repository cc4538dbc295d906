"""Network parameters: address encodings, subsidy schedule and block-file magic per chain."""

from __future__ import annotations

from dataclasses import dataclass

COIN = 100_000_000


@dataclass(frozen=True)
class Network:
    name: str  # Bitcoin Core's getblockchaininfo "chain": main, test, testnet4, signet, regtest
    p2pkh_version: int
    p2sh_version: int
    bech32_hrp: str
    halving_interval: int
    magic: bytes  # blk*.dat record magic
    genesis_hash: str


MAIN = Network("main", 0x00, 0x05, "bc", 210_000, bytes.fromhex("f9beb4d9"),
               "000000000019d6689c085ae165831e934ff763ae46a2a6c172b3f1b60a8ce26f")
TEST = Network("test", 0x6F, 0xC4, "tb", 210_000, bytes.fromhex("0b110907"),
               "000000000933ea01ad0ee984209779baaec3ced90fa3f408719526f8d77f4943")
TESTNET4 = Network("testnet4", 0x6F, 0xC4, "tb", 210_000, bytes.fromhex("1c163f28"),
                   "00000000da84f2bafbbc53dee25a72ae507ff4914b867c565be350b0da8bf043")
SIGNET = Network("signet", 0x6F, 0xC4, "tb", 210_000, bytes.fromhex("0a03cf40"),
                 "00000008819873e925422c1ff0f99f7cc9bbb232af63a077a480a3633bee1ef6")
REGTEST = Network("regtest", 0x6F, 0xC4, "bcrt", 150, bytes.fromhex("fabfb5da"),
                  "0f9188f13cb7b2c71f2a335e3a4fc328bf5beb436012afca590b1a11466e2206")

NETWORKS: dict[str, Network] = {n.name: n for n in (MAIN, TEST, TESTNET4, SIGNET, REGTEST)}


def network_for_chain(chain: str) -> Network:
    """Map a node's chain name (Core's "main"/"test"/...; "mainnet"/"testnet" accepted too)."""
    aliases = {"mainnet": "main", "bitcoin": "main", "testnet": "test", "testnet3": "test"}
    key = aliases.get(chain, chain)
    try:
        return NETWORKS[key]
    except KeyError:
        raise ValueError(f"unknown chain {chain!r}; expected one of {sorted(NETWORKS)}") from None


def block_subsidy(height: int, network: Network) -> int:
    """Subsidy in satoshis, as Core's GetBlockSubsidy: 50 BTC halved every interval, 0 after 64 halvings."""
    halvings = height // network.halving_interval
    if halvings >= 64:
        return 0
    return (50 * COIN) >> halvings
