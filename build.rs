//! Compiles `proto/` with protox (pure Rust), so a build needs no system `protoc`.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/inflight.proto");
    let descriptors = protox::compile(["proto/inflight.proto"], ["proto"])?;
    tonic_prost_build::configure().compile_fds(descriptors)?;
    Ok(())
}
