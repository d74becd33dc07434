#!/usr/bin/env python3
"""Write the identity/signature fixture vectors that heurist-protocol's tests read.

The independent peer is eth-account (the library the reference Python miner signs with).
The script makes its own virtual environment under tools/.venv, installs eth-account there,
and re-runs itself inside it. Nothing it installs is committed; the JSON it writes is.

    python3 tools/make_signature_fixtures.py

Writes heurist-protocol/tests/fixtures/eth-account/vectors.json.
Every vector is reproducible: the mnemonic entropy is SHA-256("heurist-fixture-<i>")[:16].
"""
import hashlib
import json
import os
import subprocess
import sys
import venv

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VENV = os.path.join(ROOT, "tools", ".venv")
OUT = os.path.join(ROOT, "heurist-protocol", "tests", "fixtures", "eth-account", "vectors.json")
ETH_ACCOUNT = "eth-account==0.13.7"


def ensure_venv():
    py = os.path.join(VENV, "bin", "python")
    if os.path.realpath(sys.prefix) == os.path.realpath(VENV):
        return
    if not os.path.exists(py):
        venv.create(VENV, with_pip=True)
    subprocess.check_call([py, "-m", "pip", "install", "-q", ETH_ACCOUNT])
    os.execv(py, [py, os.path.abspath(__file__)] + sys.argv[1:])


def main():
    from eth_account import Account
    from eth_account.hdaccount.mnemonic import Mnemonic
    from eth_account.messages import encode_defunct
    import eth_account

    Account.enable_unaudited_hdwallet_features()
    words = Mnemonic("english")
    vectors = []
    # Times chosen around hour boundaries: on the hour, one second before, one second after,
    # and arbitrary times inside an hour.
    base_hours = [1717300800, 1700000000 - 1700000000 % 3600, 1609459200, 1767225600]
    offsets = [0, -1, 1, 1799, 3599, 2345]
    tags = [None, "rtx4090", "GPU_0", "a1b2c3"]
    for i in range(64):
        entropy = hashlib.sha256(f"heurist-fixture-{i}".encode()).digest()[:16]
        phrase = words.to_mnemonic(entropy)
        acct = Account.from_mnemonic(phrase, account_path="m/44'/60'/0'/0/0")
        # The reward wallet is a different address from the identity; derive one from the
        # same entropy so vectors are reproducible.
        reward = "0x" + hashlib.sha256(b"reward" + entropy).hexdigest()[:40]
        tag = tags[i % len(tags)]
        miner_id = reward if tag is None else f"{reward}-{tag}"
        if i % 3 == 1:
            # Operators paste checksummed or upper-case addresses into .env.
            miner_id = "0x" + miner_id[2:].upper() if tag is None else "0x" + reward[2:].upper() + "-" + tag
        now = base_hours[i % len(base_hours)] + offsets[i % len(offsets)] + 3600 * (i // 8)
        hour = now - now % 3600
        message = f"{miner_id.split('-')[0].lower()}-{hour}"
        signed = Account.sign_message(encode_defunct(text=message), private_key=acct.key)
        sig = bytes(signed.signature)
        vectors.append({
            "mnemonic": phrase,
            "identity_address": acct.address.lower(),
            "identity_address_checksummed": acct.address,
            "miner_id": miner_id,
            "unix_time": now,
            "message": message,
            "signature": sig.hex(),
            "r": hex(signed.r),
            "s": hex(signed.s),
            "v": signed.v,
        })
    doc = {
        "source": f"eth-account {eth_account.__version__} (Account.from_mnemonic, Account.sign_message(encode_defunct(text=...)))",
        "derivation_path": "m/44'/60'/0'/0/0",
        "message_format": "<reward address lower case>-<unix time rounded down to the hour>",
        "vectors": vectors,
    }
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")
    print(f"wrote {len(vectors)} vectors to {os.path.relpath(OUT, ROOT)}")


if __name__ == "__main__":
    ensure_venv()
    main()
