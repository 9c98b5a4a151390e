//! `[store]`: where tokens live (memory or Redis), sweeping, the state file.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::Spanned;

use super::RedisTopology;
use super::raw::RawStore;
use super::{ConfigError, StoreBackend, StoreConfig, Validator};

const DEFAULT_MAX_STALENESS: Duration = Duration::from_millis(250);
const DEFAULT_SWEEP_INTERVAL: Duration = Duration::from_secs(30);

impl Validator<'_> {
    /// `[store]`; the memory backend when the section is absent.
    pub(super) fn store(
        &self,
        raw: Option<&Spanned<RawStore>>,
    ) -> Result<StoreConfig, ConfigError> {
        let Some(s) = raw else {
            return Ok(StoreConfig {
                backend: StoreBackend::Memory,
                sweep_interval: DEFAULT_SWEEP_INTERVAL,
                state_file: None,
                max_staleness: DEFAULT_MAX_STALENESS,
            });
        };
        let s = s.get_ref();
        let backend = self.backend(s)?;
        Ok(StoreConfig {
            state_file: self.state_file(s, &backend)?,
            backend,
            sweep_interval: self.opt_duration(
                &s.sweep_interval,
                "store.sweep_interval",
                DEFAULT_SWEEP_INTERVAL,
            )?,
            max_staleness: self.opt_duration(
                &s.max_staleness,
                "store.max_staleness",
                DEFAULT_MAX_STALENESS,
            )?,
        })
    }

    /// `store.backend` and where Redis is: exactly one of `redis_url`,
    /// `redis_sentinel`, `redis_cluster` with the redis backend, none without.
    fn backend(&self, s: &RawStore) -> Result<StoreBackend, ConfigError> {
        const ONE_OF: &str = "store.redis_url, store.redis_sentinel or store.redis_cluster";
        let mut given: Vec<(Range<usize>, &str, RedisTopology)> = Vec::new();
        if let Some(u) = &s.redis_url {
            given.push((
                u.span(),
                "store.redis_url",
                RedisTopology::Single(u.get_ref().clone()),
            ));
        }
        if let Some(sen) = &s.redis_sentinel {
            let r = sen.get_ref();
            let t = RedisTopology::Sentinel {
                master_name: r.master_name.get_ref().clone(),
                nodes: r.nodes.get_ref().clone(),
            };
            if let Err(e) = t.check() {
                let (span, key) = if e.starts_with("master_name") {
                    (r.master_name.span(), "store.redis_sentinel.master_name")
                } else {
                    (r.nodes.span(), "store.redis_sentinel.nodes")
                };
                return Err(self.err(span, key, e));
            }
            given.push((sen.span(), "store.redis_sentinel", t));
        }
        if let Some(c) = &s.redis_cluster {
            given.push((
                c.span(),
                "store.redis_cluster",
                RedisTopology::Cluster(c.get_ref().clone()),
            ));
        }
        let backend = s.backend.as_ref().map(|b| (b.span(), b.get_ref().as_str()));
        match (backend, given.len()) {
            (Some((_, "redis")), 1) => {
                let (span, key, t) = given.pop().expect("one");
                t.check().map_err(|e| self.err(span, key, e))?;
                Ok(StoreBackend::Redis(t))
            }
            (Some((span, "redis")), 0) => Err(self.err(
                span,
                "store.redis_url",
                format!("the redis backend needs one of {ONE_OF}"),
            )),
            (Some((_, "redis")), _) => {
                let (span, key, _) = given.swap_remove(1);
                Err(self.err(span, key, format!("give only one of {ONE_OF}")))
            }
            (None | Some((_, "memory")), 0) => Ok(StoreBackend::Memory),
            (Some((_, "memory")), _) => {
                let (span, key, _) = given.swap_remove(0);
                Err(self.err(span, key, "only used with store.backend = \"redis\""))
            }
            (None, _) => {
                let (span, key, _) = given.swap_remove(0);
                Err(self.err(
                    span,
                    "store.backend",
                    format!("{key} is set: say backend = \"redis\""),
                ))
            }
            (Some((span, other)), _) => Err(self.err(
                span,
                "store.backend",
                format!("`{other}` is not a backend: use \"memory\" or \"redis\""),
            )),
        }
    }

    /// `store.state_file`, memory backend only, relative to the config file.
    fn state_file(
        &self,
        s: &RawStore,
        backend: &StoreBackend,
    ) -> Result<Option<PathBuf>, ConfigError> {
        match &s.state_file {
            None => Ok(None),
            Some(f) if *backend != StoreBackend::Memory => Err(self.err(
                f.span(),
                "store.state_file",
                "only used with store.backend = \"memory\" (Redis keeps the tokens itself)",
            )),
            Some(f) if f.get_ref().trim().is_empty() => {
                Err(self.err(f.span(), "store.state_file", "must be a file path"))
            }
            Some(f) => Ok(Some(
                self.file
                    .parent()
                    .unwrap_or(Path::new("."))
                    .join(f.get_ref()),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::config::testing::{base, parse};

    #[test]
    fn store_settings_are_checked() {
        let key = |store: &str| {
            parse(&(base() + "\n[store]\n" + store))
                .err()
                .and_then(|e| e.key)
        };
        assert_eq!(
            key("backend = \"redis\"\n").as_deref(),
            Some("store.redis_url")
        );
        assert_eq!(
            key("backend = \"redis\"\nredis_url = \"http://x\"\n").as_deref(),
            Some("store.redis_url")
        );
        assert_eq!(
            key("redis_url = \"redis://x/0\"\n").as_deref(),
            Some("store.backend")
        );
        assert_eq!(
            key("backend = \"memory\"\nredis_url = \"redis://x/0\"\n").as_deref(),
            Some("store.redis_url")
        );
        assert_eq!(
            key("backend = \"disk\"\n").as_deref(),
            Some("store.backend")
        );
        assert_eq!(
            key("sweep_interval = \"400y\"\n").as_deref(),
            Some("store.sweep_interval")
        );
    }

    #[test]
    fn exactly_one_redis_topology_is_named() {
        let err = |store: &str| parse(&(base() + "\n[store]\nbackend = \"redis\"\n" + store)).err();
        let key = |store: &str| err(store).and_then(|e| e.key);
        let sentinel = "redis_sentinel = { master_name = \"mymaster\", nodes = [\"redis://10.0.0.5:26379\"] }\n";
        let cluster = "redis_cluster = [\"redis://10.0.0.5:7000\", \"redis://10.0.0.6:7000\"]\n";
        assert!(err(sentinel).is_none());
        assert!(err(cluster).is_none());
        // Two at once: refused at the second, with its line.
        let e = err(&format!("redis_url = \"redis://h/0\"\n{cluster}")).unwrap();
        assert_eq!(e.key.as_deref(), Some("store.redis_cluster"));
        assert!(e.line.is_some() && e.message.contains("only one"), "{e}");
        assert_eq!(
            key(&format!("{sentinel}{cluster}")).as_deref(),
            Some("store.redis_cluster")
        );
        assert_eq!(
            key("redis_sentinel = { master_name = \"\", nodes = [\"redis://h:26379\"] }\n")
                .as_deref(),
            Some("store.redis_sentinel.master_name")
        );
        assert_eq!(
            key("redis_sentinel = { master_name = \"m\", nodes = [] }\n").as_deref(),
            Some("store.redis_sentinel.nodes")
        );
        assert_eq!(
            key("redis_sentinel = { master_name = \"m\", nodes = [\"h:1\"] }\n").as_deref(),
            Some("store.redis_sentinel.nodes")
        );
        // Unknown keys inside the table are refused by name.
        assert!(
            err("redis_sentinel = { master_name = \"m\", nodes = [\"redis://h:1\"], x = 1 }\n")
                .is_some()
        );
        assert_eq!(
            key("redis_cluster = []\n").as_deref(),
            Some("store.redis_cluster")
        );
        assert_eq!(
            key("redis_cluster = [\"redis://a:7000\", \"tcp://b\"]\n").as_deref(),
            Some("store.redis_cluster")
        );
        // Without the redis backend, a topology is a mistake.
        let memory = parse(&(base() + "\n[store]\nbackend = \"memory\"\n" + cluster)).unwrap_err();
        assert_eq!(memory.key.as_deref(), Some("store.redis_cluster"));
        let unsaid = parse(&(base() + "\n[store]\n" + sentinel)).unwrap_err();
        assert_eq!(unsaid.key.as_deref(), Some("store.backend"));
        // Shown without passwords.
        let text = base()
            + "\n[store]\nbackend = \"redis\"\n"
            + "redis_sentinel = { master_name = \"m\", nodes = [\"redis://:hunter2@10.0.0.5:26379\"] }\n";
        let summary = parse(&text).unwrap().summary();
        assert!(
            summary.contains("redis sentinel m via redis://***@10.0.0.5:26379"),
            "{summary}"
        );
        assert!(!summary.contains("hunter2"));
    }
}
