//! Where the shared Redis is (`[store]`): one server (`redis_url`), a primary
//! found through Sentinel (`redis_sentinel`), or a Cluster (`redis_cluster`).
//! The config names exactly one of them; [`RedisTopology::check`] is the rule
//! the config validator applies to each.

use std::fmt;

/// How to reach the shared Redis.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedisTopology {
    /// One server: `redis://` or `rediss://` URL.
    Single(String),
    /// A primary and its replicas under Sentinel: the primary is asked of the
    /// sentinels at `nodes` (their URLs), and asked again after a failover.
    Sentinel {
        master_name: String,
        nodes: Vec<String>,
    },
    /// Cluster seed nodes; the rest of the cluster is learnt from them.
    Cluster(Vec<String>),
}

/// `redis://` or `rediss://`, and a URL redis-rs can read (parsed only: no
/// client is made).
pub fn valid_url(u: &str) -> bool {
    use redis::IntoConnectionInfo;
    (u.starts_with("redis://") || u.starts_with("rediss://")) && u.into_connection_info().is_ok()
}

/// A URL without the password it may carry (logs, `check-config`).
pub fn redacted(url: &str) -> String {
    match url
        .split_once("://")
        .and_then(|(scheme, rest)| rest.split_once('@').map(|(_, host)| (scheme, host)))
    {
        Some((scheme, host)) => format!("{scheme}://***@{host}"),
        None => url.to_string(),
    }
}

impl RedisTopology {
    /// What is wrong with the value, if anything (the config names the key).
    pub fn check(&self) -> Result<(), String> {
        const URL: &str = "a redis:// or rediss:// URL like \"redis://127.0.0.1:6379/0\"";
        match self {
            RedisTopology::Single(u) if valid_url(u) => Ok(()),
            RedisTopology::Single(_) => Err(format!("must be {URL}")),
            RedisTopology::Sentinel { master_name, nodes } => {
                if master_name.trim().is_empty() {
                    return Err("master_name must name the primary the sentinels watch".into());
                }
                check_nodes(nodes, "sentinel", "redis://10.0.0.5:26379")
            }
            RedisTopology::Cluster(nodes) => check_nodes(nodes, "cluster", "redis://10.0.0.5:7000"),
        }
    }

    /// The URLs this topology is given (sentinels, seeds, or the one server).
    pub fn urls(&self) -> &[String] {
        match self {
            RedisTopology::Single(u) => std::slice::from_ref(u),
            RedisTopology::Sentinel { nodes, .. } | RedisTopology::Cluster(nodes) => nodes,
        }
    }
}

fn check_nodes(nodes: &[String], what: &str, example: &str) -> Result<(), String> {
    if nodes.is_empty() {
        return Err(format!(
            "needs at least one {what} node URL, like \"{example}\""
        ));
    }
    match nodes.iter().find(|u| !valid_url(u)) {
        Some(bad) => Err(format!(
            "`{}` is not a redis:// or rediss:// URL like \"{example}\"",
            redacted(bad)
        )),
        None => Ok(()),
    }
}

impl fmt::Display for RedisTopology {
    // Never the password a URL may carry.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let list = |nodes: &[String]| {
            nodes
                .iter()
                .map(|u| redacted(u))
                .collect::<Vec<_>>()
                .join(", ")
        };
        match self {
            RedisTopology::Single(u) => write!(f, "redis {}", redacted(u)),
            RedisTopology::Sentinel { master_name, nodes } => {
                write!(f, "redis sentinel {master_name} via {}", list(nodes))
            }
            RedisTopology::Cluster(nodes) => write!(f, "redis cluster {}", list(nodes)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kind_is_checked_and_shown_without_passwords() {
        assert!(
            RedisTopology::Single("redis://:pw@h:6379/0".into())
                .check()
                .is_ok()
        );
        assert!(RedisTopology::Single("http://h".into()).check().is_err());
        let s = RedisTopology::Sentinel {
            master_name: "mymaster".into(),
            nodes: vec!["redis://:hunter2@10.0.0.5:26379".into()],
        };
        assert!(s.check().is_ok());
        assert_eq!(
            s.to_string(),
            "redis sentinel mymaster via redis://***@10.0.0.5:26379"
        );
        let no_name = RedisTopology::Sentinel {
            master_name: " ".into(),
            nodes: vec!["redis://h:26379".into()],
        };
        assert!(no_name.check().unwrap_err().contains("master_name"));
        let bad = RedisTopology::Cluster(vec!["redis://a:7000".into(), "x://:pw@b".into()]);
        let e = bad.check().unwrap_err();
        assert!(e.contains("x://***@b") && !e.contains("pw"), "{e}");
        assert!(RedisTopology::Cluster(vec![]).check().is_err());
    }
}
