//! Packaging (issue 12, item 4): the manual page shipped in `dist/man` is the one the binary
//! generates; the Debian package metadata names files that exist; and, where cargo-deb is
//! installed, the package built from it holds the binary, the units, the manual page and the
//! default configuration directory (`dpkg -c`).

mod common;
mod skip;

use std::path::{Path, PathBuf};
use std::process::Command;

fn crate_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn repo() -> PathBuf {
    crate_dir().join("../..")
}

#[test]
fn the_shipped_manual_page_is_the_generated_one() {
    let (code, page, err) = common::run_cli(&["man"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        page.starts_with(".ie"),
        "not roff: {}",
        &page[..page.len().min(200)]
    );
    assert!(page.contains(".TH understudy 1"), "no title line");
    for sub in ["agent", "switchover", "completions", "top"] {
        assert!(page.contains(sub), "the page does not mention {sub}");
    }
    let shipped = repo().join("dist/man/understudy.1");
    let text = std::fs::read_to_string(&shipped).unwrap_or_default();
    assert!(
        text == page,
        "{} is out of date: regenerate it with `cargo run -- man > dist/man/understudy.1`",
        shipped.display()
    );
}

/// `[package.metadata.deb]` of this crate.
fn deb_metadata() -> toml::Value {
    let text = std::fs::read_to_string(crate_dir().join("Cargo.toml")).expect("Cargo.toml");
    let doc: toml::Value = toml::from_str(&text).expect("Cargo.toml parses");
    doc["package"]["metadata"]["deb"].clone()
}

#[test]
fn the_debian_package_metadata_names_files_that_exist() {
    let deb = deb_metadata();
    let assets = deb["assets"].as_array().expect("assets");
    let mut dests = Vec::new();
    for a in assets {
        let a = a.as_array().expect("[source, dest, mode]");
        let (src, dest) = (a[0].as_str().expect("src"), a[1].as_str().expect("dest"));
        if !src.starts_with("target/") {
            assert!(
                crate_dir().join(src).is_file(),
                "asset {src} does not exist"
            );
        }
        dests.push(format!(
            "{dest}{}",
            Path::new(src)
                .file_name()
                .and_then(|f| f.to_str())
                .unwrap_or("")
        ));
    }
    for want in [
        "usr/bin/understudy",
        "lib/systemd/system/understudy@.service",
        "lib/systemd/system/understudy-serve.service",
        "usr/share/man/man1/understudy.1",
        "etc/understudy/example.toml.sample",
    ] {
        assert!(
            dests.iter().any(|d| d == want),
            "{want} not packaged: {dests:?}"
        );
    }
    let scripts = deb["maintainer-scripts"]
        .as_str()
        .expect("maintainer-scripts");
    assert!(crate_dir().join(scripts).join("postinst").is_file());
    // The example configuration is one the agent accepts (but for its service command).
    let example = std::fs::read_to_string(repo().join("dist/etc/understudy/example.toml.sample"))
        .expect("example");
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("gw-a.toml");
    let example = example
        .replace(
            "/var/lib/understudy/",
            &format!("{}/", dir.path().display()),
        )
        .replace("\"/opt/gw/bin/gateway\"", "\"sleep\"");
    std::fs::write(&cfg, example).expect("write");
    let (code, out, err) = common::run_cli(&["check-config", cfg.to_str().expect("utf-8")]);
    assert_eq!(code, 0, "{out}{err}");
}

#[test]
fn the_debian_package_holds_binary_units_manual_and_config_dir() {
    let has_cargo_deb = Command::new("cargo")
        .args(["deb", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_cargo_deb {
        return skip::skip(
            "the_debian_package_holds_binary_units_manual_and_config_dir",
            "cargo-deb is not installed (cargo install cargo-deb)",
        );
    }
    // The package of the binary under test: put where cargo-deb looks for a release build,
    // so the test needs no release build of its own.
    let work = tempfile::tempdir().expect("tempdir");
    let release = work.path().join("release");
    std::fs::create_dir_all(&release).expect("mkdir");
    std::fs::copy(common::BIN, release.join("understudy")).expect("copy the binary");
    let deb = work.path().join("understudy.deb");
    let out = Command::new("cargo")
        .args([
            "deb",
            "-p",
            "understudy",
            "--no-build",
            "--no-strip",
            // The contents are checked, not the compression: xz of the unstripped binary took
            // a minute of the suite.
            "--fast",
            "--output",
        ])
        .arg(&deb)
        .env("CARGO_TARGET_DIR", work.path())
        .current_dir(repo())
        .output()
        .expect("cargo deb");
    assert!(
        out.status.success(),
        "cargo deb failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listing = Command::new("dpkg")
        .arg("-c")
        .arg(&deb)
        .output()
        .expect("dpkg -c");
    let listing = String::from_utf8_lossy(&listing.stdout).to_string();
    for want in [
        "./usr/bin/understudy",
        "./lib/systemd/system/understudy@.service",
        "./lib/systemd/system/understudy-serve.service",
        "./usr/share/man/man1/understudy.1",
        "./etc/understudy/example.toml.sample",
    ] {
        assert!(
            listing.contains(want),
            "{want} missing from the package:\n{listing}"
        );
    }
}
