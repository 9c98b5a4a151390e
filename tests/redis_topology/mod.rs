//! Real Redis topologies for the fleet tests, started from the `redis-server`
//! binary on free ports (never 6379), each process in a temporary directory of
//! its own: a primary with a replica watched by three sentinels
//! (`redis-server --sentinel`), and a three-primary Cluster made with
//! `redis-cli --cluster create`. Every process is killed and every directory
//! removed when the value is dropped, a failing test included (unwinding runs
//! `Drop`).
#![allow(dead_code)]

use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use redis::Value;
use redis::aio::MultiplexedConnection;

use crate::common::{HANG_GUARD, closed_port};

pub const MASTER_NAME: &str = "mymaster";

/// One `redis-server` process (a data node or a sentinel).
pub struct Node {
    pub port: u16,
    dir: PathBuf,
    args: Vec<String>,
    child: Option<Child>,
}

fn spawn(dir: &Path, args: &[String]) -> Child {
    match Command::new("redis-server")
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
    {
        Ok(c) => c,
        Err(e) if e.kind() == ErrorKind::NotFound => panic!(
            "redis-server is not on PATH: the fleet tests need it \
             (e.g. `apt-get install redis-server`); they do not skip without it"
        ),
        Err(e) => panic!("could not start redis-server: {e}"),
    }
}

impl Node {
    /// A data node on a free port in its own directory under `root`.
    fn data(root: &Path, extra: &[&str]) -> Node {
        let port = free_port();
        let dir = root.join(format!("node-{port}"));
        std::fs::create_dir_all(&dir).unwrap();
        let mut args: Vec<String> = [
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--daemonize",
            "no",
            "--dir",
            dir.to_str().unwrap(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(extra.iter().map(|s| s.to_string()));
        Node::launch(port, dir, args)
    }

    fn launch(port: u16, dir: PathBuf, args: Vec<String>) -> Node {
        let child = Some(spawn(&dir, &args));
        Node {
            port,
            dir,
            args,
            child,
        }
    }

    /// A sentinel watching the primary on `primary`.
    fn sentinel(root: &Path, primary: u16) -> Node {
        let port = free_port();
        let dir = root.join(format!("sentinel-{port}"));
        std::fs::create_dir_all(&dir).unwrap();
        let conf = dir.join("sentinel.conf");
        // Fast enough for a test: down after 1 s, a failover may be retried
        // after 2 x 2 s (the second failover of the test needs that).
        std::fs::write(
            &conf,
            format!(
                "port {port}\nbind 127.0.0.1\ndaemonize no\ndir {dir}\n\
                 sentinel monitor {MASTER_NAME} 127.0.0.1 {primary} 2\n\
                 sentinel down-after-milliseconds {MASTER_NAME} 1000\n\
                 sentinel failover-timeout {MASTER_NAME} 2000\n\
                 sentinel parallel-syncs {MASTER_NAME} 1\n",
                dir = dir.display()
            ),
        )
        .unwrap();
        let args = vec![conf.to_str().unwrap().to_string(), "--sentinel".to_string()];
        Node::launch(port, dir, args)
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// SIGKILL, then reap.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the same process again (same port, same directory).
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "still running");
        self.child = Some(spawn(&self.dir, &self.args));
    }

    pub async fn conn(&self) -> MultiplexedConnection {
        let client = redis::Client::open(self.url()).unwrap();
        let deadline = Instant::now() + HANG_GUARD;
        loop {
            if let Ok(Ok(c)) = tokio::time::timeout(
                Duration::from_secs(2),
                client.get_multiplexed_async_connection(),
            )
            .await
            {
                return c;
            }
            assert!(
                Instant::now() < deadline,
                "redis-server on {} does not accept connections",
                self.port
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn cmd<T: redis::FromRedisValue>(&self, args: &[&str]) -> redis::RedisResult<T> {
        let mut c = self.conn().await;
        let mut cmd = redis::cmd(args[0]);
        for a in &args[1..] {
            cmd.arg(*a);
        }
        cmd.query_async(&mut c).await
    }

    /// `INFO replication` as `key:value` pairs.
    pub async fn replication(&self) -> Vec<(String, String)> {
        let info: String = self.cmd(&["INFO", "replication"]).await.unwrap_or_default();
        info.lines()
            .filter_map(|l| l.trim().split_once(':'))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// Pub/sub subscribers connected here (`CLIENT LIST` entries with sub>0).
    pub async fn subscribers(&self) -> usize {
        let list: String = self.cmd(&["CLIENT", "LIST"]).await.unwrap_or_default();
        list.lines()
            .filter(|l| {
                l.split(' ')
                    .any(|f| f.strip_prefix("sub=").is_some_and(|n| n != "0"))
            })
            .count()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

fn free_port() -> u16 {
    loop {
        let p = closed_port();
        // Never the standard ports (someone else's services), and a cluster
        // node also needs port + 10000 for its bus.
        if p != 6379 && p != 26379 && p < 55000 {
            return p;
        }
    }
}

/// Polls `check` every 50 ms until it holds; panics naming `what` after the hang guard.
pub async fn until<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + HANG_GUARD;
    while !check().await {
        assert!(Instant::now() < deadline, "gave up waiting: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ------------------------------------------------------------------ sentinel

/// A primary, one replica and three sentinels.
pub struct SentinelSet {
    /// The two data nodes; which is primary changes with failovers.
    pub nodes: Vec<Node>,
    pub sentinels: Vec<Node>,
    _root: tempfile::TempDir,
}

impl SentinelSet {
    pub async fn start() -> SentinelSet {
        let root = tempfile::tempdir().unwrap();
        let primary = Node::data(root.path(), &[]);
        let p = primary.port.to_string();
        let replica = Node::data(root.path(), &["--replicaof", "127.0.0.1", &p]);
        let sentinels = (0..3)
            .map(|_| Node::sentinel(root.path(), primary.port))
            .collect();
        let set = SentinelSet {
            nodes: vec![primary, replica],
            sentinels,
            _root: root,
        };
        set.wait_healthy().await;
        set
    }

    /// The sentinels' URLs, for `store.redis_sentinel.nodes`.
    pub fn sentinel_urls(&self) -> Vec<String> {
        self.sentinels.iter().map(Node::url).collect()
    }

    /// The port every sentinel names as the primary, once they agree.
    pub async fn agreed_primary(&self) -> Option<u16> {
        let mut named = None;
        for s in &self.sentinels {
            let addr: Option<(String, u16)> = s
                .cmd(&["SENTINEL", "get-master-addr-by-name", MASTER_NAME])
                .await
                .ok()?;
            let port = addr?.1;
            if named.is_some_and(|n| n != port) {
                return None;
            }
            named = Some(port);
        }
        named
    }

    pub fn node(&self, port: u16) -> &Node {
        self.nodes
            .iter()
            .find(|n| n.port == port)
            .expect("a data node")
    }

    pub fn node_mut(&mut self, port: u16) -> &mut Node {
        self.nodes
            .iter_mut()
            .find(|n| n.port == port)
            .expect("a data node")
    }

    /// Until the sentinels agree on a primary that has an online replica, see
    /// each other (quorum and majority for a failover), and know the replica.
    pub async fn wait_healthy(&self) {
        until(
            "a primary with an online replica, watched by 3 sentinels",
            || async {
                let Some(p) = self.agreed_primary().await else {
                    return false;
                };
                let rep = self.node(p).replication().await;
                let online = rep
                    .iter()
                    .any(|(k, v)| k.starts_with("slave") && v.contains("state=online"));
                if !online {
                    return false;
                }
                for s in &self.sentinels {
                    let ok: redis::RedisResult<String> =
                        s.cmd(&["SENTINEL", "CKQUORUM", MASTER_NAME]).await;
                    let replicas: redis::RedisResult<Vec<Value>> =
                        s.cmd(&["SENTINEL", "REPLICAS", MASTER_NAME]).await;
                    if ok.is_err() || replicas.map_or(true, |r| r.is_empty()) {
                        return false;
                    }
                }
                true
            },
        )
        .await;
    }

    /// `SENTINEL FAILOVER` until a sentinel takes it (one may refuse while a
    /// previous failover's timeout runs).
    pub async fn force_failover(&self) {
        until("a sentinel to start the failover", || async {
            for s in &self.sentinels {
                let r: redis::RedisResult<String> =
                    s.cmd(&["SENTINEL", "FAILOVER", MASTER_NAME]).await;
                if r.is_ok() {
                    return true;
                }
            }
            false
        })
        .await;
    }
}

// ------------------------------------------------------------------- cluster

/// Three primaries, no replicas, all 16384 slots covered.
pub struct ClusterSet {
    pub nodes: Vec<Node>,
    _root: tempfile::TempDir,
}

impl ClusterSet {
    pub async fn start() -> ClusterSet {
        let root = tempfile::tempdir().unwrap();
        let nodes: Vec<Node> = (0..3)
            .map(|_| {
                Node::data(
                    root.path(),
                    &[
                        "--cluster-enabled",
                        "yes",
                        "--cluster-config-file",
                        "nodes.conf",
                        "--cluster-node-timeout",
                        "2000",
                    ],
                )
            })
            .collect();
        for n in &nodes {
            n.conn().await;
        }
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let out = tokio::task::spawn_blocking(move || {
            let mut cmd = Command::new("redis-cli");
            cmd.arg("--cluster").arg("create");
            cmd.args(&addrs);
            cmd.arg("--cluster-yes");
            cmd.stdin(Stdio::null()).output()
        })
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("redis-cli is needed for the cluster test: {e}"));
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let set = ClusterSet { nodes, _root: root };
        until("cluster_state:ok on every node", || async {
            for n in &set.nodes {
                let info: String = n.cmd(&["CLUSTER", "INFO"]).await.unwrap_or_default();
                if !info.contains("cluster_state:ok") {
                    return false;
                }
            }
            true
        })
        .await;
        set
    }

    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(Node::url).collect()
    }

    pub async fn slot_of(&self, key: &str) -> u16 {
        self.nodes[0]
            .cmd(&["CLUSTER", "KEYSLOT", key])
            .await
            .unwrap()
    }

    /// The index of the node that owns `slot` now.
    pub async fn owner(&self, slot: u16) -> usize {
        let ranges: Vec<Value> = self.nodes[0].cmd(&["CLUSTER", "SLOTS"]).await.unwrap();
        for r in ranges {
            let Value::Array(r) = r else { continue };
            let (Some(Value::Int(lo)), Some(Value::Int(hi)), Some(Value::Array(primary))) =
                (r.first(), r.get(1), r.get(2))
            else {
                continue;
            };
            if i64::from(slot) < *lo || i64::from(slot) > *hi {
                continue;
            }
            if let Some(Value::Int(port)) = primary.get(1) {
                return self
                    .nodes
                    .iter()
                    .position(|n| i64::from(n.port) == *port)
                    .expect("a known node");
            }
        }
        panic!("no owner for slot {slot}");
    }

    /// Moves `slot` and its keys to node `to`, as `redis-cli --cluster
    /// reshard` does, slowly: while it is under way, clients meet `ASK`
    /// redirections and `TRYAGAIN`; after it, `MOVED`.
    pub async fn move_slot(&self, slot: u16, to: usize) {
        let from = self.owner(slot).await;
        assert_ne!(from, to, "slot {slot} is already on node {to}");
        let (src, dst) = (&self.nodes[from], &self.nodes[to]);
        let src_id: String = src.cmd(&["CLUSTER", "MYID"]).await.unwrap();
        let dst_id: String = dst.cmd(&["CLUSTER", "MYID"]).await.unwrap();
        let s = slot.to_string();
        let _: () = dst
            .cmd(&["CLUSTER", "SETSLOT", &s, "IMPORTING", &src_id])
            .await
            .unwrap();
        let _: () = src
            .cmd(&["CLUSTER", "SETSLOT", &s, "MIGRATING", &dst_id])
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        let port = dst.port.to_string();
        loop {
            // One key at a time, with a pause: the slot stays half moved for a while.
            let keys: Vec<String> = src
                .cmd(&["CLUSTER", "GETKEYSINSLOT", &s, "1"])
                .await
                .unwrap();
            let Some(key) = keys.first() else { break };
            let _: () = src
                .cmd(&["MIGRATE", "127.0.0.1", &port, key, "0", "5000"])
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        for n in [dst, src] {
            let _: () = n
                .cmd(&["CLUSTER", "SETSLOT", &s, "NODE", &dst_id])
                .await
                .unwrap();
        }
        let other = &self.nodes[3 - from - to];
        let _: () = other
            .cmd(&["CLUSTER", "SETSLOT", &s, "NODE", &dst_id])
            .await
            .unwrap();
        until("the moved slot to be known by every node", || async {
            self.owner(slot).await == to
        })
        .await;
    }
}
