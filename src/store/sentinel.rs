//! Following the primary of a Redis Sentinel deployment (`store.redis_sentinel`).
//!
//! redis-rs finds and verifies a primary through the sentinels
//! ([`Sentinel::async_master_for`]: the sentinels' view, then `ROLE` on the
//! node), but a connection it hands out stays on that node. Here the sentinels
//! are asked which node is the primary every [`POLL`], and at once when a
//! command fails in a way a failover causes (connection lost, `READONLY` from a
//! demoted primary); when the answer changes, the command connection moves to
//! the new primary and [`RedisConn::primary_changes`](super::RedisConn::primary_changes)
//! ticks, so that the revocation subscriber moves too and drops its cache (it
//! may have missed what was published meanwhile). No restart is needed.
//!
//! The primary's connection uses the credentials, database and TLS of the
//! first sentinel URL (the usual deployment gives both one password).

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use redis::aio::{ConnectionManager, MultiplexedConnection};
use redis::sentinel::{Sentinel, SentinelNodeConnectionInfo};
use redis::{Client, ConnectionAddr, ErrorKind, IntoConnectionInfo, RedisError, ServerErrorKind};
use tokio::sync::{Mutex, Notify, watch};

use super::connection::manager_config;

/// How often the sentinels are asked for the primary when nothing failed.
const POLL: Duration = Duration::from_millis(250);
/// One sentinel or primary that does not answer within this is skipped.
const ANSWER_WITHIN: Duration = Duration::from_millis(500);

struct Primary {
    client: Client,
    conn: ConnectionManager,
    /// For durable writes alone (see `RedisConn::durable`).
    durable: ConnectionManager,
    /// `host:port`, as the sentinels name it.
    addr: String,
}

pub(super) struct SentinelLink {
    master_name: String,
    /// For the cheap question "which node is the primary?".
    sentinels: Vec<Client>,
    /// redis-rs's finder, which also checks the node's `ROLE`.
    finder: Mutex<Sentinel>,
    node_info: SentinelNodeConnectionInfo,
    primary: ArcSwapOption<Primary>,
    recheck: Notify,
}

fn no_primary() -> RedisError {
    RedisError::from((ErrorKind::Io, "no redis primary known yet"))
}

impl SentinelLink {
    pub(super) fn new(master_name: &str, nodes: &[String]) -> Result<SentinelLink, RedisError> {
        let sentinels = nodes
            .iter()
            .map(|u| Client::open(u.as_str()))
            .collect::<Result<Vec<_>, _>>()?;
        let first = nodes
            .first()
            .ok_or_else(|| RedisError::from((ErrorKind::InvalidClientConfig, "no sentinel")))?
            .as_str()
            .into_connection_info()?;
        let mut node_info = SentinelNodeConnectionInfo::default()
            .set_redis_connection_info(first.redis_settings().clone());
        if let ConnectionAddr::TcpTls { insecure, .. } = first.addr() {
            node_info = node_info.set_tls_mode(if *insecure {
                redis::TlsMode::Insecure
            } else {
                redis::TlsMode::Secure
            });
        }
        Ok(SentinelLink {
            master_name: master_name.to_string(),
            finder: Mutex::new(Sentinel::build(nodes.to_vec())?),
            sentinels,
            node_info,
            primary: ArcSwapOption::empty(),
            recheck: Notify::new(),
        })
    }

    /// The command connection to the current primary.
    pub(super) fn connection(&self) -> Result<ConnectionManager, RedisError> {
        self.on_primary(|p| p.conn.clone())
    }

    /// The durable-write connection to the current primary.
    pub(super) fn durable_connection(&self) -> Result<ConnectionManager, RedisError> {
        self.on_primary(|p| p.durable.clone())
    }

    /// `pick` of the current primary; with none known yet, an error, and the
    /// sentinels are asked again at once.
    fn on_primary<T>(&self, pick: impl FnOnce(&Primary) -> T) -> Result<T, RedisError> {
        match self.primary.load().as_ref() {
            Some(p) => Ok(pick(p)),
            None => {
                self.recheck.notify_one();
                Err(no_primary())
            }
        }
    }

    /// A client for the current primary (subscriptions).
    pub(super) fn client(&self) -> Option<Client> {
        self.primary.load().as_ref().map(|p| p.client.clone())
    }

    /// A command failed with `e`: if a failover may be why, ask the sentinels now.
    pub(super) fn saw(&self, e: Option<&RedisError>) {
        let Some(e) = e else { return };
        if e.is_io_error()
            || e.is_timeout()
            || e.is_connection_dropped()
            || matches!(
                e.kind(),
                ErrorKind::Server(ServerErrorKind::ReadOnly | ServerErrorKind::MasterDown)
            )
        {
            self.recheck.notify_one();
        }
    }

    /// Keeps the connection on the primary the sentinels name, forever.
    pub(super) async fn follow(self: Arc<Self>, changed: watch::Sender<u64>) {
        let mut asked: Option<(usize, MultiplexedConnection)> = None;
        let mut complained = false;
        loop {
            let named = self.ask_sentinels(&mut asked).await;
            let current = self.primary.load().as_ref().map(|p| p.addr.clone());
            if current.is_none() || (named.is_some() && named != current) {
                match self.find().await {
                    Ok(p) if Some(&p.addr) != current.as_ref() => {
                        tracing::info!(primary = %p.addr, master = %self.master_name, "redis primary found through sentinel");
                        self.primary.store(Some(Arc::new(p)));
                        changed.send_modify(|n| *n += 1);
                        complained = false;
                    }
                    Ok(_) => {}
                    Err(e) if !complained => {
                        tracing::warn!(error = %e, master = %self.master_name, "no redis primary found through sentinel yet; requests that need the store get 503");
                        complained = true;
                    }
                    Err(_) => {}
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(POLL) => {}
                _ = self.recheck.notified() => {}
            }
        }
    }

    /// `host:port` of the primary, as the first sentinel that answers names it.
    async fn ask_sentinels(
        &self,
        asked: &mut Option<(usize, MultiplexedConnection)>,
    ) -> Option<String> {
        let n = self.sentinels.len();
        let start = asked.as_ref().map_or(0, |(i, _)| *i);
        for k in 0..n {
            let i = (start + k) % n;
            let mut conn = match asked.take() {
                Some((j, c)) if j == i => c,
                _ => match tokio::time::timeout(
                    ANSWER_WITHIN,
                    self.sentinels[i].get_multiplexed_async_connection(),
                )
                .await
                {
                    Ok(Ok(c)) => c,
                    _ => continue,
                },
            };
            let answer = tokio::time::timeout(
                ANSWER_WITHIN,
                redis::cmd("SENTINEL")
                    .arg("get-master-addr-by-name")
                    .arg(&self.master_name)
                    .query_async::<Option<(String, u16)>>(&mut conn),
            )
            .await;
            if let Ok(Ok(found)) = answer {
                *asked = Some((i, conn));
                return found.map(|(host, port)| format!("{host}:{port}"));
            }
        }
        None
    }

    /// The primary by redis-rs's lookup (the sentinels' view, checked by `ROLE`).
    async fn find(&self) -> Result<Primary, RedisError> {
        let lookup = async {
            let mut finder = self.finder.lock().await;
            finder
                .async_master_for(&self.master_name, Some(&self.node_info))
                .await
        };
        let client = tokio::time::timeout(ANSWER_WITHIN * 4, lookup)
            .await
            .map_err(|_| {
                RedisError::from((ErrorKind::Io, "the sentinels did not answer in time"))
            })??;
        let addr = client.get_connection_info().addr().to_string();
        let conn = ConnectionManager::new_lazy_with_config(client.clone(), manager_config())?;
        let durable = ConnectionManager::new_lazy_with_config(client.clone(), manager_config())?;
        Ok(Primary {
            client,
            conn,
            durable,
            addr,
        })
    }
}
