//! Build script: lets `target/*/tokbridge` find libtorch at run time without LD_LIBRARY_PATH.
//!
//! torch-sys links against `$LIBTORCH/lib`; we add that directory (symlinks resolved, so the
//! binary does not depend on the clone's `.libtorch` link) as an rpath. When the libtorch has
//! CUDA (`libtorch_cuda.so` is present) we link it with `--no-as-needed`: nothing in our code
//! names a CUDA symbol, and without it the linker drops the library and CUDA is never registered.
//!
//! It also compiles src/ops/ops.cpp, the few libtorch operations tch does not bind (fused
//! AdamW, setting a gradient), against the same libtorch headers and C++ ABI as torch-sys, and
//! src/train/dist.cpp (c10d's Gloo process group) when gloo's headers are there, with NCCL's
//! process group too in a CUDA libtorch that has NCCL's headers.
use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=src/ops/ops.cpp");
    println!("cargo:rerun-if-changed=src/ops/ffi.h");
    let Ok(libtorch) = std::env::var("LIBTORCH") else {
        panic!("LIBTORCH is not set: run scripts/bootstrap, which links ./.libtorch for .cargo/config.toml");
    };
    let include = PathBuf::from(&libtorch).join("include");
    cc::Build::new()
        .cpp(true)
        .file("src/ops/ops.cpp")
        .include(&include)
        .flag("-std=c++17")
        .flag(format!("-D_GLIBCXX_USE_CXX11_ABI={}", std::env::var("LIBTORCH_CXX11_ABI").unwrap_or_else(|_| "1".into())))
        .flag("-DGLOG_USE_GLOG_EXPORT")
        // at::parallel_for is OpenMP inlined from ATen's headers: without -fopenmp it runs on
        // one thread. Its runtime is libtorch's own libgomp.so.1 (linked below), not a second one.
        .flag("-fopenmp")
        .warnings(false)
        .compile("tokbridge_ops");
    // Data parallelism through c10d's Gloo process group, where gloo's headers are present.
    println!("cargo:rerun-if-changed=src/train/dist.cpp");
    println!("cargo:rerun-if-changed={}", include.join("gloo").display());
    println!("cargo:rerun-if-changed={}", include.join("nccl.h").display());
    println!("cargo::rustc-check-cfg=cfg(tokbridge_dist)");
    let lib = PathBuf::from(&libtorch).join("lib");
    let lib = lib.canonicalize().unwrap_or(lib);
    let cuda = lib.join("libtorch_cuda.so").exists();
    if include.join("gloo/context.h").exists() {
        let mut build = cc::Build::new();
        build
            .cpp(true)
            .file("src/train/dist.cpp")
            .include(&include)
            .include(include.join("torch/csrc/api/include"))
            .flag("-std=c++17")
            .flag(format!("-D_GLIBCXX_USE_CXX11_ABI={}", std::env::var("LIBTORCH_CXX11_ABI").unwrap_or_else(|_| "1".into())))
            .flag("-DGLOG_USE_GLOG_EXPORT")
            .flag("-DUSE_C10D_GLOO")
            .warnings(false);
        // NCCL for CUDA tensors: a CUDA libtorch with NCCL's and the CUDA runtime's headers
        // (scripts/bootstrap --cuda puts them there).
        if cuda && include.join("nccl.h").exists() {
            build.define("USE_C10D_NCCL", None).define("USE_CUDA", None);
        }
        build.compile("tokbridge_dist");
        println!("cargo:rustc-cfg=tokbridge_dist");
    } else {
        println!("cargo:warning=no gloo headers in {}: built without multi-process training (run scripts/bootstrap)", include.display());
    }
    println!("cargo:rerun-if-changed={}", lib.display());
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
    println!("cargo:rustc-link-search=native={}", lib.display());
    println!("cargo:rustc-link-arg=-l:libgomp.so.1");
    if cuda {
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed,-ltorch_cuda,--as-needed");
        if include.join("nccl.h").exists() {
            // dist.cpp (c10::cuda::set_device) and c10d's inlined code call c10_cuda, the CUDA
            // runtime and NCCL directly.
            println!("cargo:rustc-link-arg=-lc10_cuda");
            println!("cargo:rustc-link-arg=-l:libcudart.so.13");
            println!("cargo:rustc-link-arg=-l:libnccl.so.2");
        }
    }
}
