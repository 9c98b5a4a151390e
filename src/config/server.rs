//! `[server]`: listeners, timeouts, connection caps, trusted proxies, TLS files.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use toml::Spanned;

use super::load::TlsFiles;
use super::raw::RawServer;
use super::{ConfigError, ServerConfig, Validator, cores, spanned_items};

const DEFAULT_MAX_HEADER_BYTES: usize = 16 * 1024;
const DEFAULT_MAX_CONNECTIONS_PER_IP: usize = 256;

impl Validator<'_> {
    /// `[server]`. The TLS files are named, not read: `tls` is `None` until
    /// [`super::load`] builds it from the returned [`TlsFiles`].
    pub(super) fn server(
        &self,
        raw: &Spanned<RawServer>,
    ) -> Result<(ServerConfig, Option<TlsFiles>), ConfigError> {
        let r = raw.get_ref();
        let server = ServerConfig {
            listen: self.socket_addr(&r.listen, "server.listen", "127.0.0.1:8080")?,
            header_read_timeout: self.opt_duration(
                &r.header_read_timeout,
                "server.header_read_timeout",
                Duration::from_secs(10),
            )?,
            shutdown_timeout: self.opt_duration(
                &r.shutdown_timeout,
                "server.shutdown_timeout",
                Duration::from_secs(10),
            )?,
            max_header_bytes: self.positive(
                &r.max_header_bytes,
                "server.max_header_bytes",
                8192,
                1 << 20,
                DEFAULT_MAX_HEADER_BYTES,
            )?,
            workers: self.positive(&r.workers, "server.workers", 1, 1024, cores())?,
            max_connections: self.positive(
                &r.max_connections,
                "server.max_connections",
                1,
                10_000_000,
                50_000,
            )?,
            max_connections_per_ip: self.positive(
                &r.max_connections_per_ip,
                "server.max_connections_per_ip",
                1,
                10_000_000,
                DEFAULT_MAX_CONNECTIONS_PER_IP,
            )?,
            body_read_timeout: self.opt_duration(
                &r.body_read_timeout,
                "server.body_read_timeout",
                Duration::from_secs(10),
            )?,
            trusted_proxies: self.cidrs(&r.trusted_proxies, "server.trusted_proxies")?,
            tls: None,
            admin_listen: match &r.admin_listen {
                None => None,
                Some(a) => Some(self.socket_addr(a, "server.admin_listen", "127.0.0.1:9090")?),
            },
        };
        // Relative to the config file.
        let base = self.file.parent().unwrap_or(Path::new("."));
        let tls = r.tls.as_ref().map(|t| TlsFiles {
            cert: base.join(&t.get_ref().cert),
            key: base.join(&t.get_ref().key),
            line: self.line_of(t.span().start),
        });
        Ok((server, tls))
    }

    /// An `ip:port` socket address; `example` shows the shape in the error.
    fn socket_addr(
        &self,
        v: &Spanned<String>,
        key: &str,
        example: &str,
    ) -> Result<SocketAddr, ConfigError> {
        v.get_ref().parse().map_err(|_| {
            self.err(
                v.span(),
                key,
                format!("`{}` is not an address like \"{example}\"", v.get_ref()),
            )
        })
    }

    /// A list of CIDR blocks (`10.0.0.0/8`) or single addresses (`10.0.0.1`).
    fn cidrs(
        &self,
        v: &Option<Spanned<Vec<String>>>,
        key: &str,
    ) -> Result<Vec<ipnet::IpNet>, ConfigError> {
        let mut out = Vec::new();
        for (item, span) in spanned_items(v) {
            let net = item
                .parse::<ipnet::IpNet>()
                .or_else(|_| item.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                .map_err(|_| {
                    self.err(
                        span,
                        key,
                        format!("`{item}` is not an address or CIDR block like \"10.0.0.0/8\""),
                    )
                })?;
            out.push(net.trunc());
        }
        Ok(out)
    }
}
