"""scriptPubKey classification and address encoding (BIP13/BIP173/BIP350 vectors, all networks)."""

from __future__ import annotations

import base58
import pytest

from pipeline.chain.networks import MAIN, REGTEST, SIGNET, TEST, TESTNET4
from pipeline.chain.scripts import SCRIPT_TYPES, address_to_script, classify, script_to_address

H20 = bytes(range(1, 21))
H32 = bytes(range(1, 33))
PK33 = b"\x02" + bytes(range(32))
PK65 = b"\x04" + bytes(range(64))

P2PKH = b"\x76\xa9\x14" + H20 + b"\x88\xac"
P2SH = b"\xa9\x14" + H20 + b"\x87"
P2WPKH = b"\x00\x14" + H20
P2WSH = b"\x00\x20" + H32
P2TR = b"\x51\x20" + H32


@pytest.mark.parametrize(("script", "kind"), [
    (b"\x21" + PK33 + b"\xac", "p2pk"),
    (b"\x41" + PK65 + b"\xac", "p2pk"),
    (P2PKH, "p2pkh"),
    (P2SH, "p2sh"),
    (P2WPKH, "p2wpkh"),
    (P2WSH, "p2wsh"),
    (P2TR, "p2tr"),
    (b"\x51\x02\x4e\x73", "witness_unknown"),             # P2A anchor: v1, 2-byte program
    (b"\x52\x10" + H20[:16], "witness_unknown"),          # v2
    (b"\x60\x28" + bytes(40), "witness_unknown"),         # v16, 40 bytes
    (b"\x51\x28" + bytes(40), "witness_unknown"),         # v1 but not 32 bytes
    (b"\x00\x10" + bytes(16), "nonstandard"),             # v0 with a length BIP141 forbids
    (bytes.fromhex("6a24aa21a9ed") + H32, "witness_commitment"),
    (bytes.fromhex("6a24aa21a9ed") + H32 + b"extra", "witness_commitment"),
    (bytes.fromhex("6a24aa21a9ed") + H32[:10], "op_return"),   # too short for a commitment
    (b"\x6a", "op_return"),
    (b"\x6a\x09RSKBLOCK:", "op_return"),
    (b"\x52\x21" + PK33 + b"\x21" + PK33 + b"\x21" + PK33 + b"\x53\xae", "multisig"),   # 2-of-3
    (b"\x51\x41" + PK65 + b"\x51\xae", "multisig"),                                     # 1-of-1
    (b"\x53\x21" + PK33 + b"\x21" + PK33 + b"\x52\xae", "nonstandard"),                 # m > n
    (b"\x52\x21" + PK33 + b"\x53\xae", "nonstandard"),                                  # n != key count
    (b"\x21" + b"\x05" + PK33[1:] + b"\xac", "nonstandard"),   # bad pubkey header byte
    (b"RSKBLOCK:" + H32, "nonstandard"),                          # the 540107 output: no OP_RETURN
    (b"", "nonstandard"),
    (b"\x00", "nonstandard"),
])
def test_classify(script: bytes, kind: str) -> None:
    assert kind in SCRIPT_TYPES
    assert classify(script) == kind


def test_classify_never_fails_on_truncations() -> None:
    for script in (P2PKH, P2SH, P2TR, b"\x52\x21" + PK33 + b"\x21" + PK33 + b"\x52\xae"):
        for cut in range(len(script)):
            assert classify(script[:cut]) in SCRIPT_TYPES


@pytest.mark.parametrize(("script", "network", "address"), [
    # BIP173 / BIP350 test vectors
    (bytes.fromhex("0014751e76e8199196d454941c45d1b3a323f1433bd6"), MAIN,
     "bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t4"),
    (bytes.fromhex("00201863143c14c5166804bd19203356da136c985678cd4d27a1b8c6329604903262"), TEST,
     "tb1qrp33g0q5c5txsp9arysrx4k6zdkfs4nce4xj0gdcccefvpysxf3q0sl5k7"),
    (bytes.fromhex("5128751e76e8199196d454941c45d1b3a323f1433bd6751e76e8199196d454941c45d1b3a323f1433bd6"), MAIN,
     "bc1pw508d6qejxtdg4y5r3zarvary0c5xw7kw508d6qejxtdg4y5r3zarvary0c5xw7kt5nd6y"),
    (bytes.fromhex("6002751e"), MAIN, "bc1sw50qgdz25j"),
    (bytes.fromhex("5210751e76e8199196d454941c45d1b3a323"), MAIN, "bc1zw508d6qejxtdg4y5r3zarvaryvaxxpcs"),
    (bytes.fromhex("0020000000c4a5cad46221b2a187905e5266362b99d5e91c6ce24d165dab93e86433"), TEST,
     "tb1qqqqqp399et2xygdj5xreqhjjvcmzhxw4aywxecjdzew6hylgvsesrxh6hy"),
    (bytes.fromhex("5120000000c4a5cad46221b2a187905e5266362b99d5e91c6ce24d165dab93e86433"), TEST,
     "tb1pqqqqp399et2xygdj5xreqhjjvcmzhxw4aywxecjdzew6hylgvsesf3hn0c"),
    (bytes.fromhex("512079be667ef9dcbbac55a06295ce870b07029bfcdb2dce28d959f2815b16f81798"), MAIN,
     "bc1p0xlxvlhemja6c4dqv22uapctqupfhlxm9h8z3k2e72q4k9hcz7vqzk5jj0"),
    # Real mainnet payout addresses (block 739990 and block 413567 coinbases)
    (bytes.fromhex("a914ca35b1f4d02907314852f09935b9604507f8d70087"), MAIN, "3L8Ck6bm3sve1vJGKo6Ht2k167YKSKi8TZ"),
    (bytes.fromhex("76a914c825a1ecf2a6830c4401620c3a16f1995057c2ab88ac"), MAIN, "1KFHE7w8BhaENAswwryaoccDb6qcT6DbYY"),
])
def test_address_vectors(script: bytes, network, address: str) -> None:
    assert script_to_address(script, network) == address
    assert address_to_script(address) == (script, network)
    if address[:2].lower() in ("bc", "tb"):
        assert address_to_script(address.upper()) == (script, network)  # bech32 is case-insensitive


@pytest.mark.parametrize("script", [P2PKH, P2SH, P2WPKH, P2WSH, P2TR, b"\x52\x10" + H20[:16]])
@pytest.mark.parametrize(("network", "decoded_as"), [
    (MAIN, MAIN), (TEST, TEST), (TESTNET4, TEST), (SIGNET, TEST), (REGTEST, None),
])
def test_round_trip_every_network(script: bytes, network, decoded_as) -> None:
    address = script_to_address(script, network)
    assert address is not None
    back, got = address_to_script(address)
    assert back == script
    if decoded_as is None:  # regtest: bech32 says bcrt, base58 shares testnet's version bytes
        expected = REGTEST if address.startswith("bcrt1") else TEST
    else:
        expected = decoded_as
    assert got == expected


def test_regtest_prefixes() -> None:
    assert script_to_address(P2WPKH, REGTEST).startswith("bcrt1q")
    assert script_to_address(P2TR, REGTEST).startswith("bcrt1p")
    assert script_to_address(P2PKH, REGTEST)[0] in "mn"
    assert script_to_address(P2SH, REGTEST).startswith("2")


@pytest.mark.parametrize("script", [
    b"\x21" + PK33 + b"\xac",
    bytes.fromhex("6a24aa21a9ed") + H32,
    b"\x6a\x04abcd",
    b"\x51\x21" + PK33 + b"\x51\xae",
    b"RSKBLOCK:",
    b"\x00\x10" + bytes(16),
])
def test_no_address(script: bytes) -> None:
    assert script_to_address(script, MAIN) is None


@pytest.mark.parametrize(("address", "message"), [
    ("tc1p0xlxvlhemja6c4dqv22uapctqupfhlxm9h8z3k2e72q4k9hcz7vq5zuyut", "unknown bech32 prefix 'tc'"),
    ("ltc1qw508d6qejxtdg4y5r3zarvary0c5xw7kgmn4n9", "unknown bech32 prefix 'ltc'"),
    ("bc1p0xlxvlhemja6c4dqv22uapctqupfhlxm9h8z3k2e72q4k9hcz7vqh2y7hd", "uses the bech32 checksum"),
    ("tb1z0xlxvlhemja6c4dqv22uapctqupfhlxm9h8z3k2e72q4k9hcz7vqglt7rf", "uses the bech32 checksum"),
    ("BC1S0XLXVLHEMJA6C4DQV22UAPCTQUPFHLXM9H8Z3K2E72Q4K9HCZ7VQ54WELL", "uses the bech32 checksum"),
    ("bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kemeawh", "uses the bech32m checksum"),
    ("tb1q0xlxvlhemja6c4dqv22uapctqupfhlxm9h8z3k2e72q4k9hcz7vq24jc47", "uses the bech32m checksum"),
    ("bc1p38j9r5y49hruaue7wxjce0updqjuyyx0kh56v8s25huc6995vvpql3jow4", "invalid bech32 character"),
    ("BC130XLXVLHEMJA6C4DQV22UAPCTQUPFHLXM9H8Z3K2E72Q4K9HCZ7VQ7ZWS8R", "invalid witness version 17"),
    ("bc1pw5dgrnzv", "wrong length"),
    ("bc1p0xlxvlhemja6c4dqv22uapctqupfhlxm9h8z3k2e72q4k9hcz7v8n0nx0muaewav253zgeav", "wrong length"),
    ("BC1QR508D6QEJXTDG4Y5R3ZARVARYV98GJ9P", "wrong length"),
    ("tb1p0xlxvlhemja6c4dqv22uapctqupfhlxm9h8z3k2e72q4k9hcz7vq47Zagq", "mixes upper and lower case"),
    ("bc1p0xlxvlhemja6c4dqv22uapctqupfhlxm9h8z3k2e72q4k9hcz7v07qwwzcrf", "padding"),
    ("tb1p0xlxvlhemja6c4dqv22uapctqupfhlxm9h8z3k2e72q4k9hcz7vpggkg4j", "padding"),
    ("bc1gmk9yu", "too short"),
    ("bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t5", "bad bech32/bech32m checksum"),
    ("1KFHE7w8BhaENAswwryaoccDb6qcT6DbYz", "bad base58check checksum"),
    ("1KFHE7w8BhaENAswwryaoccDb6qcT6Db0Y", "invalid character(s) '0'"),
    (base58.b58encode_check(b"\x30" + H20).decode(), "unknown base58 version byte 0x30"),
    (base58.b58encode_check(b"\x00" + H20 + b"\x00").decode(), "wrong length"),
    (base58.b58encode_check(b"\x05" + H20[:19]).decode(), "wrong length"),
    ("", "empty"),
])
def test_invalid_addresses_name_the_problem(address: str, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        address_to_script(address)
