//! One handle on the shared Redis, whatever its [`RedisTopology`]: the token
//! store, the brute-force limiter, the rate-limit buckets and the sign-in state
//! all talk to Redis through a [`RedisConn`], which is a redis-rs
//! [`ConnectionLike`] (so commands, pipelines and scripts run on it as on any
//! connection) plus what a fleet needs beyond that:
//!
//! - [`RedisConn::durable`]: writes acknowledged only once a replica has them
//!   (`WAIT`), for revocations that must survive a failover;
//! - [`RedisConn::pubsub_client`]: where to subscribe to the revocation channel;
//! - [`RedisConn::primary_changes`]: bumped when Sentinel names a new primary,
//!   so that the subscriber moves to it and drops what it cached.
//!
//! Connections are made lazily: nothing here fails because Redis is down.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{Route, SingleNodeRoutingInfo, Slot, SlotAddr};
use redis::{Client, Cmd, Pipeline, RedisError, RedisFuture, Value};
use tokio::sync::watch;

use super::RedisTopology;
use super::sentinel::SentinelLink;

/// How long `WAIT` gives a replica to confirm a durable write (ms). Short: the
/// caller is waiting, and a replica that takes longer is as good as absent.
pub const REPLICA_ACK_MS: u64 = 500;

/// The settings of every command connection to one node: fail fast (the
/// caller gets 503), reconnect by itself.
pub(super) fn manager_config() -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_millis(500)))
        .set_response_timeout(Some(Duration::from_secs(1)))
        .set_number_of_retries(1)
        .set_max_delay(Duration::from_millis(500))
}

enum Link {
    Single {
        client: Client,
        conn: ConnectionManager,
        /// For durable writes alone: `WAIT` holds up its connection.
        durable: ConnectionManager,
    },
    Sentinel(Arc<SentinelLink>),
    Cluster {
        conn: ClusterConnection,
        durable: ClusterConnection,
        /// One client per seed node, for the subscription (see [`RedisConn::pubsub_client`]).
        seeds: Vec<Client>,
        next_seed: AtomicUsize,
    },
}

struct Shared {
    link: Link,
    /// Bumped (by the Sentinel follower) whenever the primary changes.
    primary: watch::Sender<u64>,
}

/// A cheap-to-clone handle on the shared Redis.
#[derive(Clone)]
pub struct RedisConn {
    shared: Arc<Shared>,
}

/// Why a durable write was not acknowledged.
#[derive(Debug, thiserror::Error)]
pub enum DurableError {
    #[error(transparent)]
    Redis(#[from] RedisError),
    #[error("no replica confirmed the write within {REPLICA_ACK_MS} ms ({acked} of {wanted})")]
    NotReplicated { acked: i64, wanted: i64 },
    #[error("unexpected answer to a durable write")]
    Unexpected,
}

/// The error in a pipelined answer, if it is one.
fn server_error(v: &Value) -> Option<RedisError> {
    match v {
        Value::ServerError(e) => Some(e.clone().into()),
        _ => None,
    }
}

impl RedisConn {
    /// Prepares the handle; nothing connects yet. Call it within a tokio runtime.
    pub fn new(topology: &RedisTopology) -> Result<RedisConn, RedisError> {
        let (primary, _) = watch::channel(0);
        let link = match topology {
            RedisTopology::Single(url) => {
                let client = Client::open(url.as_str())?;
                let conn =
                    ConnectionManager::new_lazy_with_config(client.clone(), manager_config())?;
                let durable =
                    ConnectionManager::new_lazy_with_config(client.clone(), manager_config())?;
                Link::Single {
                    client,
                    conn,
                    durable,
                }
            }
            RedisTopology::Sentinel { master_name, nodes } => {
                Link::Sentinel(Arc::new(SentinelLink::new(master_name, nodes)?))
            }
            RedisTopology::Cluster(nodes) => {
                let client = redis::cluster::ClusterClientBuilder::new(nodes.clone())
                    .connection_timeout(Duration::from_millis(500))
                    .response_timeout(Duration::from_secs(1))
                    // Redirections and a moved slot are followed; a node that
                    // is gone is retried briefly, then the caller gets 503.
                    .retries(3)
                    .min_retry_wait(20)
                    .max_retry_wait(250)
                    .build()?;
                let config = || {
                    redis::cluster::ClusterConfig::new()
                        .set_connection_timeout(Duration::from_millis(500))
                        .set_response_timeout(Duration::from_secs(1))
                };
                let conn = client.get_pending_async_connection_with_config(config());
                let durable = client.get_pending_async_connection_with_config(config());
                let seeds = nodes
                    .iter()
                    .map(|u| Client::open(u.as_str()))
                    .collect::<Result<_, _>>()?;
                // Instances start at a random seed: subscriptions spread over
                // the nodes, and a broadcast must cross the cluster bus.
                let first = super::random_u64() as usize;
                Link::Cluster {
                    conn,
                    durable,
                    seeds,
                    next_seed: AtomicUsize::new(first),
                }
            }
        };
        Ok(RedisConn {
            shared: Arc::new(Shared { link, primary }),
        })
    }

    /// Background work the topology needs (following Sentinel's primary).
    pub fn spawn_background(&self) -> Vec<tokio::task::JoinHandle<()>> {
        match &self.shared.link {
            Link::Sentinel(s) => {
                let (s, primary) = (s.clone(), self.shared.primary.clone());
                vec![tokio::spawn(async move { s.follow(primary).await })]
            }
            _ => Vec::new(),
        }
    }

    /// Changes each time another primary takes over (Sentinel only).
    pub fn primary_changes(&self) -> watch::Receiver<u64> {
        self.shared.primary.subscribe()
    }

    /// Where to subscribe to pub/sub channels now: the server, the current
    /// primary, or (Cluster) the next seed node in turn. A message published on
    /// any node of a cluster reaches subscribers on every node (classic pub/sub
    /// is broadcast over the cluster bus), so any node that answers will do,
    /// and a node that is gone is skipped at the next try.
    pub fn pubsub_client(&self) -> Option<Client> {
        match &self.shared.link {
            Link::Single { client, .. } => Some(client.clone()),
            Link::Sentinel(s) => s.client(),
            Link::Cluster {
                seeds, next_seed, ..
            } => {
                let i = next_seed.fetch_add(1, Ordering::Relaxed) % seeds.len().max(1);
                seeds.get(i).cloned()
            }
        }
    }

    /// Runs `pipe` (writes to keys in `key`'s hash slot, then anything else,
    /// e.g. a PUBLISH) on the node that holds `key`, and returns only once
    /// `WAIT` says a replica has it too, when there is a replica to have it.
    ///
    /// Replication is asynchronous: a write the primary acknowledged and then
    /// lost in a failover is as if it never happened. `WAIT` on the same
    /// connection covers every write sent before it on that connection; it
    /// holds that connection up while it waits, so durable writes have a
    /// connection of their own and the request path never queues behind one.
    /// Under Sentinel a replica is always required (a failover promotes one,
    /// and a replica that has just been promoted or cut off is exactly when a
    /// write on the old primary is lost); elsewhere one is required when the
    /// node reports a connected replica, and without one there is no `WAIT`.
    pub async fn durable(&self, key: &str, mut pipe: Pipeline) -> Result<(), DurableError> {
        let writes = pipe.len();
        let wanted = match &self.shared.link {
            Link::Sentinel(_) => 1,
            _ => {
                let mut info = redis::pipe();
                info.cmd("INFO").arg("replication");
                let answers = self.on_durable(key, info).await?;
                answers
                    .first()
                    .and_then(|v| redis::from_redis_value_ref::<String>(v).ok())
                    .and_then(|info| connected_replicas(&info))
                    .unwrap_or(0)
                    .min(1)
            }
        };
        // The writes and their WAIT in one packed request: on one connection to
        // one node, so a reconnect or a new primary between the two can never
        // make a WAIT that covers nothing look like a confirmation.
        if wanted > 0 {
            pipe.cmd("WAIT").arg(wanted).arg(REPLICA_ACK_MS);
        }
        let answers = self.on_durable(key, pipe).await?;
        // A write refused (READONLY from a demoted primary, say) is a failure,
        // whatever a WAIT after it says.
        if let Some(e) = answers.iter().take(writes).find_map(server_error) {
            return Err(DurableError::Redis(e));
        }
        if wanted == 0 {
            return Ok(());
        }
        let acked = match answers.get(writes) {
            Some(Value::Int(n)) => *n,
            _ => return Err(DurableError::Unexpected),
        };
        if acked < wanted {
            return Err(DurableError::NotReplicated { acked, wanted });
        }
        Ok(())
    }

    /// `pipe` on the durable-write connection to the node holding `key`.
    async fn on_durable(&self, key: &str, pipe: Pipeline) -> Result<Vec<Value>, RedisError> {
        let n = pipe.len();
        match &self.shared.link {
            Link::Single { durable, .. } => durable.clone().req_packed_commands(&pipe, 0, n).await,
            Link::Sentinel(s) => {
                let r = match s.durable_connection() {
                    Ok(mut c) => c.req_packed_commands(&pipe, 0, n).await,
                    Err(e) => Err(e),
                };
                s.saw(r.as_ref().err());
                r
            }
            Link::Cluster { durable, .. } => {
                let route = Route::with_slot(Slot::for_key(key), SlotAddr::Master);
                durable
                    .clone()
                    .route_pipeline(pipe, 0, n, SingleNodeRoutingInfo::SpecificNode(route))
                    .await
            }
        }
    }

    /// `PING`, within a second (Cluster: every node must answer).
    pub async fn ping(&self) -> bool {
        let pong = tokio::time::timeout(
            Duration::from_secs(1),
            redis::cmd("PING").query_async::<Value>(&mut self.clone()),
        )
        .await;
        matches!(pong, Ok(Ok(_)))
    }
}

/// `connected_slaves:N` of `INFO replication`.
fn connected_replicas(info: &str) -> Option<i64> {
    info.lines()
        .find_map(|l| l.trim().strip_prefix("connected_slaves:"))
        .and_then(|n| n.trim().parse().ok())
}

impl ConnectionLike for RedisConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match &self.shared.link {
            Link::Single { conn, .. } => {
                let mut conn = conn.clone();
                Box::pin(async move { conn.req_packed_command(cmd).await })
            }
            Link::Sentinel(s) => {
                let s = s.clone();
                Box::pin(async move {
                    let mut conn = s.connection()?;
                    let r = conn.req_packed_command(cmd).await;
                    s.saw(r.as_ref().err());
                    r
                })
            }
            Link::Cluster { conn, .. } => {
                let mut conn = conn.clone();
                Box::pin(async move { conn.req_packed_command(cmd).await })
            }
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match &self.shared.link {
            Link::Single { conn, .. } => {
                let mut conn = conn.clone();
                Box::pin(async move { conn.req_packed_commands(pipeline, offset, count).await })
            }
            Link::Sentinel(s) => {
                let s = s.clone();
                Box::pin(async move {
                    let mut conn = s.connection()?;
                    let r = conn.req_packed_commands(pipeline, offset, count).await;
                    s.saw(r.as_ref().err());
                    r
                })
            }
            Link::Cluster { conn, .. } => {
                let mut conn = conn.clone();
                Box::pin(async move { conn.req_packed_commands(pipeline, offset, count).await })
            }
        }
    }

    fn get_db(&self) -> i64 {
        match &self.shared.link {
            Link::Single { conn, .. } => conn.get_db(),
            _ => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replicas_are_read_from_info() {
        let info = "# Replication\r\nrole:master\r\nconnected_slaves:2\r\nslave0:ip=...\r\n";
        assert_eq!(connected_replicas(info), Some(2));
        assert_eq!(connected_replicas("role:master\r\n"), None);
    }

    #[tokio::test]
    async fn nothing_connects_until_used() {
        for t in [
            RedisTopology::Single("redis://127.0.0.1:1/0".into()),
            RedisTopology::Sentinel {
                master_name: "m".into(),
                nodes: vec!["redis://127.0.0.1:1".into()],
            },
            RedisTopology::Cluster(vec!["redis://127.0.0.1:1".into()]),
        ] {
            let c = RedisConn::new(&t).expect("built without connecting");
            assert!(!c.ping().await, "{t}: nothing listens on port 1");
        }
    }
}
