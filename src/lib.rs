//! whosthat: an OAuth 2.0 authentication gateway.
//!
//! Clients get bearer tokens from the gateway's token endpoint and call private
//! APIs through it; every proxied request is checked against the token store and
//! the route's scopes, then forwarded with the caller's identity in headers.

pub mod assertion;
pub mod audit;
pub mod cli;
pub mod clock;
pub mod config;
pub mod cors;
pub mod dispatch;
pub mod endpoint;
pub mod error;
pub mod fsutil;
pub mod gateway;
pub mod jose;
pub mod listing;
pub mod metrics;
pub mod oauth;
pub mod password;
pub mod proxy;
pub mod ratelimit;
pub mod routes;
pub mod scope;
pub mod server;
pub mod shadowing;
pub mod store;
pub mod upstream_tls;

pub use config::{Config, ConfigError};
pub use server::{Reload, reload, serve, serve_with, shutdown_signal, sighup_reloads};
