//! Compiles the protos into Rust with a pure-Rust protobuf compiler (protox), so a fresh
//! machine builds with `cargo build` alone: no system `protoc` is needed.
//!
//! - `proto/csi.proto`: the CSI spec, served to kubelet and the sidecars.
//! - `proto/pluginregistration.proto`: kubelet's plugin registration, served so that pvdir
//!   registers itself without a node-driver-registrar sidecar.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/csi.proto");
    println!("cargo:rerun-if-changed=proto/pluginregistration.proto");
    let descriptors = protox::compile(["csi.proto", "pluginregistration.proto"], ["proto"])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        // RPCs pvdir does not implement answer UNIMPLEMENTED, as the spec asks.
        .generate_default_stubs(true)
        .compile_fds(descriptors)?;
    Ok(())
}
