//! Generates the control-plane protocol code (`src/proto.rs` includes it) from `proto/`.
//!
//! Pure Rust: `protox` parses the `.proto` files, so no `protoc` is needed on the machine.
//! `pbjson-build` adds serde implementations that follow the proto3 JSON mapping, so a feed can
//! be saved to and read from a file (JSON or YAML) as the very messages the wire carries.

use anyhow::Context;
use prost::Message;

const PROTOS: &[&str] = &[
    "weft/control/v1/types.proto",
    "weft/control/v1/node.proto",
    "weft/control/v1/waypoint.proto",
    "weft/control/v1/ca.proto",
];

fn main() -> anyhow::Result<()> {
    println!("cargo:rerun-if-changed=proto");
    let descriptors = protox::compile(PROTOS, ["proto"]).context("parsing proto/ files")?;
    let encoded = descriptors.encode_to_vec();
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .emit_rerun_if_changed(false)
        // Ordered maps: deterministic encoding, so equal states encode to equal bytes.
        .btree_map(".")
        .compile_fds(descriptors)
        .context("generating rust code from proto/ files")?;
    pbjson_build::Builder::new()
        .register_descriptors(&encoded)
        .context("registering descriptors for serde")?
        // Ordered maps, as above.
        .btree_map(["."])
        .build(&[".weft.control.v1"])
        .context("generating serde code from proto/ files")?;
    Ok(())
}
