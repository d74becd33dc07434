#!/usr/bin/env python3
"""Write the SHA-256 vectors that heurist-verify's checksum tests read.

The independent peer is Python's hashlib (OpenSSL underneath). Contents are either short
texts or prefixes of a deterministic byte stream that the Rust tests regenerate themselves:
64-bit LCG words x = x * 6364136223846793005 + 1442695040888963407 (mod 2**64), starting from
x = SEED and stepped before each word, each word written little-endian. Lengths straddle the
SHA-256 block (64 bytes), small read buffers, and the default 4 MiB / 8 MiB read buffers.

    python3 tools/make_checksum_fixtures.py

Writes heurist-verify/tests/fixtures/python-hashlib/sha256.json. Needs only the standard library.
"""
import hashlib
import json
import os
import platform
import ssl
import struct

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "heurist-verify", "tests", "fixtures", "python-hashlib", "sha256.json")

A = 6364136223846793005
C = 1442695040888963407
SEED = 0x5EED_0F_4E_0123_4567
MASK = (1 << 64) - 1
MIB = 1 << 20

TEXTS = [
    "",
    "abc",
    "The quick brown fox jumps over the lazy dog",
    "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq",
    "a" * 55,
    "a" * 56,
    "a" * 64,
    "a" * 1000,
]

LENGTHS = [
    0, 1, 63, 64, 65, 1000, 4095, 4096, 4097, 100_003,
    4 * MIB - 1, 4 * MIB, 4 * MIB + 1,
    8 * MIB + 3,
    21 * MIB + 12345,
]


def lcg_stream(n):
    words = []
    x = SEED
    for _ in range((n + 7) // 8):
        x = (x * A + C) & MASK
        words.append(x)
    return struct.pack("<%dQ" % len(words), *words)[:n]


def main():
    stream = lcg_stream(max(LENGTHS))
    doc = {
        "source": "Python %s hashlib (%s)" % (platform.python_version(), ssl.OPENSSL_VERSION),
        "made_by": "python3 tools/make_checksum_fixtures.py",
        "stream": {
            "kind": "lcg64-le",
            "multiplier": A,
            "increment": C,
            "seed": SEED,
            "note": "x = x*multiplier + increment mod 2^64 before each 8-byte little-endian word; a case of length n is the first n bytes",
        },
        "texts": [{"text": t, "sha256": hashlib.sha256(t.encode()).hexdigest()} for t in TEXTS],
        "stream_prefixes": [{"len": n, "sha256": hashlib.sha256(stream[:n]).hexdigest()} for n in LENGTHS],
    }
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")
    print("wrote", OUT)


if __name__ == "__main__":
    main()
