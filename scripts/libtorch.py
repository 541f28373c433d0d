#!/usr/bin/env python3
"""Make a libtorch for tch 0.24 out of PyPI wheels, once, in a cache outside the clone.

tch 0.24 binds torch 2.11.0. PyPI's torch wheel holds a complete libtorch (torch/lib and
torch/include); libtorch_cpu.so also links against the CUDA runtime and CUPTI, which come from
their own wheels. The CPU subset (about 0.6 GB unpacked) is enough to build and run on CPU;
`--cuda` keeps every library of the wheel and adds the CUDA 13 wheels torch pins, for GPU builds,
with NCCL's and the CUDA runtime's headers (for c10d's NCCL process group).

Prints the directory to use as LIBTORCH. Reuses it when its `.complete` marker is present.
Only pip and the standard library are needed.
"""
import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

TORCH = "2.11.0"
CPU_LIBS = ["libtorch_cpu.so", "libc10.so", "libtorch.so", "libgomp.so.1", "libshm.so"]
# The CUDA 13.0.2 toolkit pieces that torch 2.11.0's `cuda-toolkit==13.0.2` pin resolves to.
CPU_CUDA_WHEELS = ["nvidia-cuda-runtime==13.0.96", "nvidia-cuda-cupti==13.0.85"]
CPU_CUDA_LIBS = ["libcudart.so.13", "libcupti.so.13"]
# GPU builds: the headers c10d's NCCL process group needs (src/train/dist.cpp): NCCL's, and the
# CUDA runtime's with what ATen's CUDA context includes (crt, cccl, cuBLAS, cuSPARSE,
# cuSOLVER); the versions torch 2.11.0 pins.
CUDA_HEADER_WHEELS = ["nvidia-nccl-cu13==2.28.9", "nvidia-cuda-runtime==13.0.96", "nvidia-cuda-crt==13.0.88", "nvidia-cuda-cccl==13.0.85",
                      "nvidia-cublas==13.1.0.3", "nvidia-cusparse==12.6.3.3", "nvidia-cusolver==12.0.4.66"]


def cache_root() -> Path:
    if os.environ.get("TOKBRIDGE_CACHE"):
        return Path(os.environ["TOKBRIDGE_CACHE"])
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "tokbridge"


def pip_download(specs, dest: Path, with_deps: bool):
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--only-binary=:all:", "-d", str(dest)]
    if not with_deps:
        cmd.append("--no-deps")
    subprocess.run(cmd + specs, check=True)


def extract(wheel: Path, keep, out_lib: Path, out_include: Path | None):
    """Copy the members of `wheel` whose file name `keep` accepts into out_lib (flat),
    and torch/include/** into out_include."""
    with zipfile.ZipFile(wheel) as z:
        for info in z.infolist():
            name = info.filename
            if info.is_dir():
                continue
            if out_include is not None and name.startswith("torch/include/"):
                target = out_include / name[len("torch/include/"):]
            elif "/lib/" in name and keep(Path(name).name):
                target = out_lib / Path(name).name
            else:
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            with z.open(info) as src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst)


def add_cuda_headers(root: Path):
    """Puts the CUDA_HEADER_WHEELS' headers (nvidia/*/include/**) into root/include, nccl.h
    (what build.rs looks for) last; the `.cuda-headers` marker names the wheels they came from."""
    marker = root / ".cuda-headers"
    if marker.exists() and marker.read_text() == "\n".join(CUDA_HEADER_WHEELS) + "\n":
        return
    print(f"tokbridge: adding NCCL's and CUDA's headers to {root}", file=sys.stderr)
    with tempfile.TemporaryDirectory(dir=root.parent) as tmp:
        tmp = Path(tmp)
        pip_download(CUDA_HEADER_WHEELS, tmp, with_deps=False)
        files = []
        for wheel in sorted(tmp.glob("*.whl")):
            with zipfile.ZipFile(wheel) as z:
                for info in z.infolist():
                    parts = info.filename.split("/")
                    if info.is_dir() or len(parts) < 4 or parts[0] != "nvidia" or parts[2] != "include":
                        continue
                    target = tmp / "include" / "/".join(parts[3:])
                    target.parent.mkdir(parents=True, exist_ok=True)
                    with z.open(info) as src, open(target, "wb") as dst:
                        shutil.copyfileobj(src, dst)
                    files.append(target)
        for f in sorted(files, key=lambda f: f.name == "nccl.h"):
            dest = root / "include" / f.relative_to(tmp / "include")
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(f, dest)
    marker.write_text("\n".join(CUDA_HEADER_WHEELS) + "\n")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cuda", action="store_true", help="keep the CUDA libraries (GPU builds)")
    args = ap.parse_args()

    flavour = "cuda" if args.cuda else "cpu"
    final = cache_root() / f"libtorch-{TORCH}-{flavour}"
    if (final / ".complete").exists():
        if args.cuda:
            add_cuda_headers(final)
        print(final)
        return
    final.parent.mkdir(parents=True, exist_ok=True)
    print(f"tokbridge: building libtorch {TORCH} ({flavour}) in {final} from PyPI wheels", file=sys.stderr)
    with tempfile.TemporaryDirectory(dir=final.parent) as tmp:
        tmp = Path(tmp)
        wheels, work = tmp / "wheels", tmp / "libtorch"
        wheels.mkdir()
        if args.cuda:
            # torch with all of its dependencies: the cuda-toolkit, cudnn, nccl, ... wheels.
            pip_download([f"torch=={TORCH}"], wheels, with_deps=True)
        else:
            pip_download([f"torch=={TORCH}"], wheels, with_deps=False)
            pip_download(CPU_CUDA_WHEELS, wheels, with_deps=False)
        lib, include = work / "lib", work / "include"
        lib.mkdir(parents=True)
        for wheel in sorted(wheels.glob("*.whl")):
            if wheel.name.startswith("torch-"):
                keep = (lambda n: ".so" in n and n != "libtorch_python.so") if args.cuda else (lambda n: n in CPU_LIBS)
                extract(wheel, keep, lib, include)
            elif wheel.name.startswith("nvidia"):
                keep = (lambda n: ".so" in n) if args.cuda else (lambda n: n in CPU_CUDA_LIBS)
                extract(wheel, keep, lib, None)
        missing = [n for n in CPU_LIBS + CPU_CUDA_LIBS if not (lib / n).exists()]
        if missing:
            sys.exit(f"tokbridge: the wheels lacked {', '.join(missing)}")
        (work / "build-version").write_text(f"{TORCH}+{flavour}\n")
        (work / ".complete").write_text("ok\n")
        if final.exists():
            shutil.rmtree(final)
        work.rename(final)  # atomic: a half-made libtorch never carries the marker
    if args.cuda:
        add_cuda_headers(final)
    print(final)


if __name__ == "__main__":
    main()
