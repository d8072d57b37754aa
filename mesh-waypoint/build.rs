//! Generates the OTLP trace export client and server (`src/telemetry/otlp/proto.rs` includes
//! them) from `proto/otlp_trace.proto`. Pure Rust: `protox` parses, so no `protoc` is needed.

use anyhow::Context;

fn main() -> anyhow::Result<()> {
    println!("cargo:rerun-if-changed=proto");
    let descriptors =
        protox::compile(["otlp_trace.proto"], ["proto"]).context("parsing proto/ files")?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .emit_rerun_if_changed(false)
        .compile_fds(descriptors)
        .context("generating rust code from proto/ files")?;
    Ok(())
}
