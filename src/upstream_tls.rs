//! TLS to upstreams: one rustls client config per route's trust roots, each
//! with an id that is never reused (what upstream connection pools are keyed by).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// TLS to a route's upstreams, with an id of its own that is never reused:
/// what upstream pools are keyed by.
#[derive(Debug, Clone)]
pub struct UpstreamTls {
    pub id: u64,
    pub config: Arc<rustls::ClientConfig>,
}

/// TLS to upstreams: TLS 1.2 and 1.3, trusting the webpki roots and `roots`
/// (a route's `ca_file`). The one place upstream TLS is set up.
pub fn upstream_tls(roots: rustls::RootCertStore) -> UpstreamTls {
    // 0 stands for plain HTTP in pool keys; ids start at 1.
    static NEXT_ID: AtomicU64 = AtomicU64::new(1);
    let mut all = rustls::RootCertStore::empty();
    all.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    all.roots.extend(roots.roots);
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
    .expect("ring supports TLS 1.2 and 1.3")
    .with_root_certificates(all)
    .with_no_client_auth();
    UpstreamTls {
        id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
        config: Arc::new(config),
    }
}
