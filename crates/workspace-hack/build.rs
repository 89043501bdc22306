//! Nothing to build. The build script makes the build dependency on syn (there for its features
//! in proc-macros, see Cargo.toml) a unit of the build without relying on how cargo treats a
//! build dependency of a crate that has no build script.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
}
