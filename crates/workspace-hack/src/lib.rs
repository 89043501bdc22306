//! Empty on purpose: this crate only asks for dependency features, so that `cargo build` of the
//! binary and the test suite's build agree on them and share one build (see its Cargo.toml).
