//! Compiles `proto/` with protox (pure Rust), so a build needs no system `protoc`.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/inflight.proto");
    let descriptors = protox::compile(["proto/inflight.proto"], ["proto"])?;
    tonic_prost_build::configure()
        // A record's value in answers shares the table's buffer (`Bytes`)
        // instead of being copied: an answer that leaves values out
        // (`api::response`) never holds more than it sends.
        .bytes(".inflight.v1.Record.value")
        .compile_fds(descriptors)?;
    Ok(())
}
