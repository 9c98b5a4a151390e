//! After validation: reading the files a config names (the TLS certificate and
//! key, routes' CA files) and building the rustls configs from them. Nothing
//! here judges a value; a file that cannot be read or used is still reported
//! with the file, line and key that named it.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use super::{Checked, Config, ConfigError, ServerConfig};
use crate::routes::RouteTable;

/// Where a value was given: its line and whole key.
#[derive(Debug, Clone)]
pub(super) struct Site {
    pub(super) line: usize,
    pub(super) key: String,
}

/// `server.tls`: the PEM files, relative paths already resolved.
#[derive(Debug, Clone)]
pub(super) struct TlsFiles {
    pub(super) cert: PathBuf,
    pub(super) key: PathBuf,
    /// The line of the `tls` table.
    pub(super) line: usize,
}

/// A route's `ca_file`, its path resolved.
#[derive(Debug, Clone)]
pub(super) struct CaFile {
    pub(super) path: PathBuf,
    pub(super) at: Site,
}

/// Reads the files `checked` names and builds the [`Config`].
pub(super) fn open(checked: Checked) -> Result<Config, ConfigError> {
    let file = checked.file;
    let err = |line: usize, key: &str, message: String| ConfigError {
        file: file.clone(),
        line: Some(line),
        key: Some(key.to_string()),
        message,
    };
    let server = ServerConfig {
        tls: match &checked.tls_files {
            None => None,
            Some(t) => Some(server_tls(t).map_err(|(key, m)| err(t.line, key, m))?),
        },
        ..checked.server
    };
    let mut routes = Vec::with_capacity(checked.routes.len());
    let mut prefix_lines = Vec::with_capacity(checked.routes.len());
    for mut r in checked.routes {
        if let Some(ca) = &r.ca_file {
            r.route.tls = Some(upstream_tls(&ca.path).map_err(|m| err(ca.at.line, &ca.at.key, m))?);
        }
        prefix_lines.push(r.prefix_line);
        routes.push(r.route);
    }
    let routes = Arc::new(RouteTable::new(routes));
    Ok(Config {
        warnings: super::routes::warnings(&routes, &prefix_lines, &file),
        endpoint_cors: super::clients::endpoint_cors(&checked.clients),
        file,
        server,
        oauth: checked.oauth,
        store: checked.store,
        users: checked.users,
        clients: checked.clients,
        routes,
    })
}

/// The certificate chain and key of `server.tls` in a rustls server config
/// (TLS 1.3 and 1.2; ALPN h2 and http/1.1). `Err`: the key to blame and why.
fn server_tls(t: &TlsFiles) -> Result<Arc<rustls::ServerConfig>, (&'static str, String)> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&t.cert)
        .and_then(|it| it.collect::<Result<_, _>>())
        .map_err(|e| {
            (
                "server.tls.cert",
                format!("cannot read {}: {e}", t.cert.display()),
            )
        })?;
    if certs.is_empty() {
        return Err((
            "server.tls.cert",
            format!("{} holds no certificate", t.cert.display()),
        ));
    }
    let key = PrivateKeyDer::from_pem_file(&t.key).map_err(|e| {
        (
            "server.tls.key",
            format!("cannot read {}: {e}", t.key.display()),
        )
    })?;
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
    .map_err(|e| ("server.tls", e.to_string()))?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .map_err(|e| {
        (
            "server.tls",
            format!("the certificate and key do not make a TLS config: {e}"),
        )
    })?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// TLS to upstreams that trust the CA certificates in `path` (PEM) besides the
/// webpki roots.
fn upstream_tls(path: &Path) -> Result<crate::upstream_tls::UpstreamTls, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<_, _>>())
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mut roots = rustls::RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(certs);
    if added == 0 {
        return Err(format!("{} holds no usable CA certificate", path.display()));
    }
    Ok(crate::upstream_tls::upstream_tls(roots))
}
