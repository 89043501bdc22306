//! Nothing to build. The protoc crate below is a build dependency so that cargo downloads it
//! before any build script runs: `scripts/protoc` (PROTOC, set by `.cargo/config.toml`) runs
//! it for the etcd-client crate's build, on a machine that has no protoc of its own.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    #[cfg(all(target_os = "linux", target_arch = "x86_64"))]
    let _ = protoc_bin_vendored_linux_x86_64::include_path;
    #[cfg(all(target_os = "linux", target_arch = "aarch64"))]
    let _ = protoc_bin_vendored_linux_aarch_64::include_path;
}
