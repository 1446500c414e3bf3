//! Link settings for libtorch.
//!
//! torch-sys links libtorch but its link arguments do not reach our binaries, so they would need
//! LD_LIBRARY_PATH at run time. We read the directory torch-sys found (`DEP_TCH_LIBTORCH_LIB`,
//! visible because torch-sys is a direct dependency) and embed it as an rpath in every binary,
//! test and bench of this package.
//!
//! With a CUDA libtorch (libtorch_cuda.so beside libtorch_cpu.so), nothing in our code references
//! libtorch_cuda directly, and the linker's default `--as-needed` would drop it, leaving CUDA
//! unavailable at run time (tch-rs issue #980): link it with `--no-as-needed`.

use std::path::Path;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") else {
        return;
    };
    println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
    if Path::new(&lib).join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
        println!("cargo:rustc-link-arg=-ltorch_cuda");
        println!("cargo:rustc-link-arg=-Wl,--as-needed");
    }
}
