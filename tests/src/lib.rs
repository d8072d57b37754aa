//! Harness shared by Weft's cross-component tests and the local lab (`cargo xtask demo`).
