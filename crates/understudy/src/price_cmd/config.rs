//! `understudy price-server --config FILE`: the price server's addresses as a TOML file, so that a
//! group's shared upstream is written once in a fragment every server includes
//! (`include = ["shared/upstream.toml"]`), and its TLS files (`tls_cert`, `tls_key`, relative to
//! the file). Flags given on the command line win over the file.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    upstream: Option<String>,
    listen: Option<String>,
    http: Option<String>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
}

/// The addresses a price server file gives (each may be missing: the flag gives it then).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PriceServerFile {
    /// The exchange feed.
    pub upstream: Option<SocketAddr>,
    /// Where price clients connect.
    pub listen: Option<SocketAddr>,
    /// `GET /health` and `/status`.
    pub http: Option<SocketAddr>,
    /// PEM certificate chain: clients must speak TLS (relative to the file's directory).
    pub tls_cert: Option<PathBuf>,
    /// Its private key.
    pub tls_key: Option<PathBuf>,
}

/// Read `path` with its fragments; an error says `FILE: KEY: reason`, naming the file the key is
/// written in.
pub fn load(path: &Path) -> Result<PriceServerFile, String> {
    let a = understudy_include::load(path).map_err(|e| e.to_string())?;
    let raw: Raw =
        serde_path_to_error::deserialize(toml::Value::Table(a.table.clone())).map_err(|e| {
            let key = e.path().to_string();
            format!(
                "{}: {key}: {}",
                a.origin(&key).display(),
                e.into_inner().message()
            )
        })?;
    let addr = |key: &str, v: Option<String>| -> Result<Option<SocketAddr>, String> {
        v.map(|s| {
            s.parse().map_err(|_| {
                format!(
                    "{}: {key}: {s:?} is not an IP:port address (e.g. \"10.0.0.5:9100\")",
                    a.origin(key).display()
                )
            })
        })
        .transpose()
    };
    Ok(PriceServerFile {
        upstream: addr("upstream", raw.upstream)?,
        listen: addr("listen", raw.listen)?,
        http: addr("http", raw.http)?,
        tls_cert: raw
            .tls_cert
            .map(|p| path.parent().unwrap_or(Path::new("")).join(p)),
        tls_key: raw
            .tls_key
            .map(|p| path.parent().unwrap_or(Path::new("")).join(p)),
    })
}
