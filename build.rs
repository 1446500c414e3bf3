//! Build steps: generated gRPC code for proto/, and link settings for libtorch.
//!
//! **Protocol.** proto/ is compiled with protox (a protobuf compiler in Rust, so no `protoc`
//! binary is needed) into a descriptor set, from which tonic-prost-build generates the messages,
//! clients and servers; the descriptor set is also kept for gRPC server reflection.
//!
//! **libtorch.** torch-sys links libtorch but its link arguments do not reach our binaries, so they
//! would need LD_LIBRARY_PATH at run time. We read the directory torch-sys found
//! (`DEP_TCH_LIBTORCH_LIB`, visible because torch-sys is a direct dependency) and embed it as an
//! rpath in every binary, test and bench of this package. With a CUDA libtorch
//! (libtorch_cuda.so beside libtorch_cpu.so), nothing in our code references libtorch_cuda
//! directly, and the linker's default `--as-needed` would drop it, leaving CUDA unavailable at run
//! time (tch-rs issue #980): link it with `--no-as-needed`.

use std::path::{Path, PathBuf};

use protox::prost::Message;

const PROTO: &str = "proto/hch/v1/hch.proto";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=proto");
    let descriptors = protox::compile([PROTO], ["proto"])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("hch_descriptor.bin"), descriptors.encode_to_vec())?;
    // Undecodable requests are the client's error (INVALID_ARGUMENT): see src/rpc/codec.rs.
    tonic_prost_build::configure()
        .codec_path("crate::rpc::codec::WireCodec")
        .compile_fds(descriptors)?;

    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    if let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
        if Path::new(&lib).join("libtorch_cuda.so").exists() {
            println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
            println!("cargo:rustc-link-arg=-ltorch_cuda");
            println!("cargo:rustc-link-arg=-Wl,--as-needed");
        }
    }
    Ok(())
}
