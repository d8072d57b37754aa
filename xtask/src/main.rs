//! `cargo xtask`: Weft's developer tasks.
fn main() {}
