//! Compiles proto/csi.proto into Rust with a pure-Rust protobuf compiler (protox), so a fresh
//! machine builds with `cargo build` alone: no system `protoc` is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/csi.proto");
    let descriptors = protox::compile(["csi.proto"], ["proto"])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        // RPCs pvdir does not implement answer UNIMPLEMENTED, as the spec asks.
        .generate_default_stubs(true)
        .compile_fds(descriptors)?;
    Ok(())
}
