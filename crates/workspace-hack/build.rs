//! Nothing to build: the build dependency on syn is there for its features (see Cargo.toml).

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
}
