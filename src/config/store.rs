//! `[store]`: where tokens live (memory or Redis), sweeping, the state file.

use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::Spanned;

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

    /// `store.backend` with `store.redis_url`, which goes with redis only.
    fn backend(&self, s: &RawStore) -> Result<StoreBackend, ConfigError> {
        match (&s.backend, &s.redis_url) {
            (Some(b), url) if b.get_ref() == "redis" => {
                let url = url.as_ref().ok_or_else(|| {
                    self.err(
                        b.span(),
                        "store.redis_url",
                        "the redis backend needs store.redis_url",
                    )
                })?;
                self.redis_url(url).map(StoreBackend::Redis)
            }
            (None, None) => Ok(StoreBackend::Memory),
            (Some(b), None) if b.get_ref() == "memory" => Ok(StoreBackend::Memory),
            (Some(b), Some(_)) if b.get_ref() == "memory" => Err(self.err(
                b.span(),
                "store.redis_url",
                "only used with store.backend = \"redis\"",
            )),
            (None, Some(url)) => Err(self.err(
                url.span(),
                "store.backend",
                "store.redis_url is set: say backend = \"redis\"",
            )),
            (Some(b), _) => Err(self.err(
                b.span(),
                "store.backend",
                format!(
                    "`{}` is not a backend: use \"memory\" or \"redis\"",
                    b.get_ref()
                ),
            )),
        }
    }

    /// A `redis://` or `rediss://` URL the Redis client can read (parsed only:
    /// no client is made and nothing connects here).
    fn redis_url(&self, url: &Spanned<String>) -> Result<String, ConfigError> {
        use ::redis::IntoConnectionInfo;
        let u = url.get_ref();
        if !(u.starts_with("redis://") || u.starts_with("rediss://"))
            || u.as_str().into_connection_info().is_err()
        {
            return Err(self.err(
                url.span(),
                "store.redis_url",
                "must be a redis:// or rediss:// URL like \"redis://127.0.0.1:6379/0\"",
            ));
        }
        Ok(u.clone())
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
}
