"""scriptPubKey classification and address encoding.

Classification follows Bitcoin Core's ``Solver`` (script/solver.cpp) so that our types map one to one
onto Core's ``scriptPubKey.type`` (pubkey, pubkeyhash, scripthash, witness_v0_keyhash, ...), with two
poolwatch-specific refinements: the BIP141 witness commitment is its own type, and every script that
starts with OP_RETURN is ``op_return`` (Core calls an OP_RETURN followed by non-push opcodes
"nonstandard"; for a coinbase both are provably unspendable data carriers, which is what matters here).

Address strings are produced and parsed by libraries, never by hand: ``base58`` (base58check) and
``bech32m`` (the BIP173/BIP350 reference implementation; the older ``bech32`` 1.2.0 package only knows
the BIP173 checksum and would produce invalid Taproot addresses).
"""

from __future__ import annotations

from functools import lru_cache

import base58
from bech32m import codecs as _bech32

from pipeline.chain.networks import MAIN, REGTEST, TEST, Network

SCRIPT_TYPES = ("p2pk", "p2pkh", "p2sh", "p2wpkh", "p2wsh", "p2tr", "witness_unknown",
                "witness_commitment", "op_return", "multisig", "nonstandard")

_OP_0 = 0x00
_OP_1 = 0x51
_OP_16 = 0x60
_OP_RETURN = 0x6A
_OP_DUP = 0x76
_OP_EQUAL = 0x87
_OP_EQUALVERIFY = 0x88
_OP_HASH160 = 0xA9
_OP_CHECKSIG = 0xAC
_OP_CHECKMULTISIG = 0xAE
_WITNESS_COMMITMENT_PREFIX = bytes.fromhex("6a24aa21a9ed")

# Base58 version bytes -> network. Testnet3, testnet4, signet and regtest all share 0x6f/0xc4, so
# a base58 address cannot tell them apart: we answer TEST for all of them.
_BASE58_VERSIONS: dict[int, tuple[Network, str]] = {
    MAIN.p2pkh_version: (MAIN, "p2pkh"),
    MAIN.p2sh_version: (MAIN, "p2sh"),
    TEST.p2pkh_version: (TEST, "p2pkh"),
    TEST.p2sh_version: (TEST, "p2sh"),
}
# bech32 HRP -> network ("tb" is shared by testnet3, testnet4 and signet; "bcrt" is regtest only).
_HRPS: dict[str, Network] = {MAIN.bech32_hrp: MAIN, TEST.bech32_hrp: TEST, REGTEST.bech32_hrp: REGTEST}


def _pubkey_size_ok(key: bytes) -> bool:
    """Core's CPubKey::ValidSize: the header byte fixes the length (02/03 compressed, 04/06/07 full)."""
    if not key:
        return False
    header = key[0]
    if header in (2, 3):
        return len(key) == 33
    if header in (4, 6, 7):
        return len(key) == 65
    return False


def witness_program(script: bytes) -> tuple[int, bytes] | None:
    """(version, program) if ``script`` is a BIP141 witness program (OP_n + one 2..40-byte push)."""
    size = len(script)
    if size < 4 or size > 42:
        return None
    op = script[0]
    if op != _OP_0 and not (_OP_1 <= op <= _OP_16):
        return None
    if script[1] + 2 != size:
        return None
    version = 0 if op == _OP_0 else op - _OP_1 + 1
    return version, script[2:]


def _is_multisig(script: bytes) -> bool:
    """Bare m-of-n CHECKMULTISIG with 1 <= m <= n <= 16 and well-sized keys, as Core's MatchMultisig."""
    if len(script) < 3 or script[-1] != _OP_CHECKMULTISIG:
        return False
    m_op, n_op = script[0], script[-2]
    if not (_OP_1 <= m_op <= _OP_16 and _OP_1 <= n_op <= _OP_16):
        return False
    m, n = m_op - _OP_1 + 1, n_op - _OP_1 + 1
    if m > n:
        return False
    pos, end, keys = 1, len(script) - 2, 0
    while pos < end:
        push = script[pos]
        if push not in (33, 65) or pos + 1 + push > end:
            return False
        if not _pubkey_size_ok(script[pos + 1:pos + 1 + push]):
            return False
        pos += 1 + push
        keys += 1
    return keys == n


def classify(script: bytes) -> str:
    """One of SCRIPT_TYPES for a scriptPubKey."""
    size = len(script)
    if size == 25 and script[:3] == b"\x76\xa9\x14" and script[23:] == b"\x88\xac":
        return "p2pkh"
    if size == 23 and script[:2] == b"\xa9\x14" and script[22] == _OP_EQUAL:
        return "p2sh"
    program = witness_program(script)
    if program is not None:
        version, prog = program
        if version == 0:
            if len(prog) == 20:
                return "p2wpkh"
            if len(prog) == 32:
                return "p2wsh"
            return "nonstandard"  # v0 with another length is unspendable and has no address (Core agrees)
        if version == 1 and len(prog) == 32:
            return "p2tr"
        return "witness_unknown"
    if size >= 1 and script[0] == _OP_RETURN:
        # BIP141: the commitment is the 0x24-byte push aa21a9ed||hash; longer scripts are allowed.
        if size >= 38 and script[:6] == _WITNESS_COMMITMENT_PREFIX:
            return "witness_commitment"
        return "op_return"
    if size in (35, 67) and script[0] == size - 2 and script[-1] == _OP_CHECKSIG \
            and _pubkey_size_ok(script[1:-1]):
        return "p2pk"
    if _is_multisig(script):
        return "multisig"
    return "nonstandard"


# Pools pay the same few thousand scripts over and over; bech32 encoding in pure Python is the
# costliest part of decoding a coinbase, so encoded addresses are remembered.
@lru_cache(maxsize=1 << 16)
def script_to_address(script: bytes, network: Network) -> str | None:
    """The address of ``script`` on ``network``; None for types without one (p2pk, multisig, data, ...)."""
    kind = classify(script)
    if kind == "p2pkh":
        return base58.b58encode_check(bytes([network.p2pkh_version]) + script[3:23]).decode("ascii")
    if kind == "p2sh":
        return base58.b58encode_check(bytes([network.p2sh_version]) + script[2:22]).decode("ascii")
    if kind in ("p2wpkh", "p2wsh", "p2tr", "witness_unknown"):
        version, prog = witness_program(script)  # type: ignore[misc]  # classify guarantees a program
        try:
            # bech32m.encode picks bech32 for v0 and bech32m for v1+ (BIP350).
            return _bech32.encode(network.bech32_hrp, version, prog)
        except _bech32.DecodeError:
            return None  # cannot happen for a valid program; an unencodable script simply has no address
    return None


def _witness_script(version: int, program: bytes) -> bytes:
    op = _OP_0 if version == 0 else _OP_1 + version - 1
    return bytes([op, len(program)]) + bytes(program)


def _decode_segwit(address: str) -> tuple[bytes, Network]:
    """Parse a bech32/bech32m address, with an error naming exactly what is wrong."""
    if address.lower() != address and address.upper() != address:
        raise ValueError(f"bech32 address {address!r} mixes upper and lower case")
    text = address.lower()
    if len(text) > 90:
        raise ValueError(f"bech32 address is {len(text)} characters long, more than the 90 allowed")
    pos = text.rfind("1")
    hrp, data_part = text[:pos], text[pos + 1:]
    network = _HRPS.get(hrp)
    if network is None:
        raise ValueError(f"unknown bech32 prefix {hrp!r} in {address!r}; expected one of {sorted(_HRPS)}")
    bad = sorted({c for c in data_part if c not in _bech32.CHARSET})
    if bad:
        raise ValueError(f"invalid bech32 character(s) {''.join(bad)!r} in {address!r}")
    if len(data_part) < 7:
        raise ValueError(f"bech32 address {address!r} is too short to hold a witness version and checksum")
    try:
        hrp_got, data, spec = _bech32.bech32_decode(text)
    except _bech32.DecodeError:
        raise ValueError(f"bad bech32/bech32m checksum in {address!r} (typo?)") from None
    version = data[0]
    if version > 16:
        raise ValueError(f"invalid witness version {version} in {address!r} (0-16 allowed)")
    try:
        program = bytes(_bech32.convertbits(data[1:], 5, 8, False))
    except _bech32.DecodeError:
        raise ValueError(f"invalid bech32 padding in {address!r}") from None
    if not 2 <= len(program) <= 40:
        raise ValueError(f"wrong length: witness program of {len(program)} bytes in {address!r} (2-40 allowed)")
    if version == 0 and len(program) not in (20, 32):
        raise ValueError(f"wrong length: witness v0 program of {len(program)} bytes in {address!r} "
                         "(20 for P2WPKH or 32 for P2WSH)")
    want = _bech32.Encoding.BECH32 if version == 0 else _bech32.Encoding.BECH32M
    if spec != want:
        raise ValueError(f"witness version {version} address {address!r} uses the {spec.name.lower()} checksum; "
                         f"BIP350 requires {want.name.lower()}")
    return _witness_script(version, program), network


def _decode_base58(address: str) -> tuple[bytes, Network]:
    bad = sorted({c for c in address if c.encode() not in base58.BITCOIN_ALPHABET})
    if bad:
        raise ValueError(f"{address!r} is neither bech32 nor base58: invalid character(s) {''.join(bad)!r}")
    try:
        payload = base58.b58decode_check(address)
    except ValueError:
        raise ValueError(f"bad base58check checksum in {address!r} (typo?)") from None
    if len(payload) != 21:
        raise ValueError(f"wrong length: base58 address {address!r} holds {len(payload)} bytes, "
                         "expected 21 (version byte + 20-byte hash)")
    entry = _BASE58_VERSIONS.get(payload[0])
    if entry is None:
        raise ValueError(f"unknown base58 version byte 0x{payload[0]:02x} in {address!r} "
                         "(known: 0x00/0x05 mainnet, 0x6f/0xc4 testnet/signet/regtest)")
    network, kind = entry
    digest = payload[1:]
    if kind == "p2pkh":
        return bytes([_OP_DUP, _OP_HASH160, 20]) + digest + bytes([_OP_EQUALVERIFY, _OP_CHECKSIG]), network
    return bytes([_OP_HASH160, 20]) + digest + bytes([_OP_EQUAL]), network


def address_to_script(address: str) -> tuple[bytes, Network]:
    """scriptPubKey and network of an address; ValueError naming the problem for anything invalid.

    The network is MAIN, TEST (also for testnet4, signet and base58 regtest addresses, which share
    testnet's encodings) or REGTEST (bech32 ``bcrt1...`` only).
    """
    if not isinstance(address, str) or not address:
        raise ValueError(f"empty or non-string address {address!r}")
    address = address.strip()
    lowered = address.lower()
    pos = lowered.rfind("1")
    if pos > 0 and lowered[:pos] in _HRPS:
        return _decode_segwit(address)
    # Base58 has no '0', 'O', 'I' or 'l'; a string using them around a '1' separator is a bech32
    # string for another chain or network (ltc1..., bc2...): name the prefix, not the characters.
    not_base58 = any(c.encode() not in base58.BITCOIN_ALPHABET for c in address)
    if not_base58 and pos > 0 and all(c in _bech32.CHARSET for c in lowered[pos + 1:]):
        raise ValueError(f"unknown bech32 prefix {lowered[:pos]!r} in {address!r}; expected one of {sorted(_HRPS)}")
    return _decode_base58(address)
