//! Build script: lets `target/*/tokbridge` find libtorch at run time without LD_LIBRARY_PATH.
//!
//! torch-sys links against `$LIBTORCH/lib`; we add that directory (symlinks resolved, so the
//! binary does not depend on the clone's `.libtorch` link) as an rpath. When the libtorch has
//! CUDA (`libtorch_cuda.so` is present) we link it with `--no-as-needed`: nothing in our code
//! names a CUDA symbol, and without it the linker drops the library and CUDA is never registered.
use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    println!("cargo:rerun-if-changed=build.rs");
    let Ok(libtorch) = std::env::var("LIBTORCH") else {
        println!("cargo:warning=LIBTORCH is not set; run scripts/bootstrap (the binary will need LD_LIBRARY_PATH)");
        return;
    };
    let lib = PathBuf::from(&libtorch).join("lib");
    let lib = lib.canonicalize().unwrap_or(lib);
    println!("cargo:rerun-if-changed={}", lib.display());
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
    if lib.join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-search=native={}", lib.display());
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed,-ltorch_cuda,--as-needed");
    }
}
