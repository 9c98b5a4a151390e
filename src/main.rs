//! The `whosthat` command line.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use whosthat::{Config, cli};

// mimalloc: the proxied path allocates and frees small buffers on every request;
// glibc's malloc showed up as ~13% of its instructions in the callgrind profile.
// `whosthat::alloc` says why it is not the `mimalloc` crate's allocator.
#[global_allocator]
static GLOBAL: whosthat::alloc::Allocator = whosthat::alloc::Allocator;

#[derive(Parser)]
#[command(
    name = "whosthat",
    version,
    about = "An OAuth 2.0 authentication gateway"
)]
struct Cli {
    /// The config file.
    #[arg(
        short,
        long,
        global = true,
        env = "WHOSTHAT_CONFIG",
        default_value = "gateway.toml"
    )]
    config: PathBuf,
    /// Log format when serving (no subcommand): text, or one JSON object per line.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway (the default).
    Serve {
        /// Log format: human-readable text, or one JSON object per line.
        #[arg(long, value_enum)]
        log_format: Option<LogFormat>,
    },
    /// Validate the config file and print a summary; warnings go to stderr.
    CheckConfig {
        /// Treat warnings (such as routes that reach the same upstream paths
        /// with different checks) as errors: exit 1.
        #[arg(long)]
        strict: bool,
    },
    /// Read a password (stdin, or a prompt without echo) and print its argon2id PHC hash.
    HashPassword,
    /// Add, remove or list the [[users]] of the config file (edited in place, comments kept).
    #[command(subcommand)]
    User(cli::UserCommand),
    /// Add, remove or list the [[clients]] of the config file (edited in place, comments kept).
    #[command(subcommand)]
    Client(cli::ClientCommand),
    /// Check which route a request would take.
    #[command(subcommand)]
    Route(cli::RouteCommand),
    /// Write a new signing key (PEM, mode 0600) for [oauth] signing_keys; never overwrites.
    Keygen {
        /// The algorithm: ES256 (P-256), RS256 (RSA 3072, what OpenID Connect
        /// clients expect by default) or EdDSA (Ed25519).
        #[arg(long, value_enum, default_value_t = KeyAlg::Es256)]
        alg: KeyAlg,
        /// Where to write the key.
        path: PathBuf,
    },
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum KeyAlg {
    #[value(name = "ES256")]
    Es256,
    #[value(name = "RS256")]
    Rs256,
    #[value(name = "EdDSA")]
    EdDsa,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let command = cli.command.unwrap_or(Command::Serve { log_format: None });
    match command {
        Command::Serve { log_format } => serve(&cli.config, log_format.unwrap_or(cli.log_format)),
        Command::CheckConfig { strict } => check_config(&cli.config, strict),
        Command::HashPassword => hash_password(),
        Command::User(cmd) => done(cli::user(&cli.config, cmd)),
        Command::Client(cmd) => done(cli::client(&cli.config, cmd)),
        Command::Route(cmd) => match cli::route(&cli.config, cmd) {
            Ok(true) => ExitCode::SUCCESS,
            Ok(false) => ExitCode::FAILURE,
            Err(e) => done(Err(e)),
        },
        Command::Keygen { alg, path } => keygen(alg, &path),
    }
}

/// `whosthat keygen`: the key to the file, its kid and the config line to stdout.
fn keygen(alg: KeyAlg, path: &std::path::Path) -> ExitCode {
    use whosthat::jose::Alg;
    let alg = match alg {
        KeyAlg::Es256 => Alg::Es256,
        KeyAlg::Rs256 => Alg::Rs256,
        KeyAlg::EdDsa => Alg::EdDsa,
    };
    match whosthat::jose::keys::write_new_key(path, alg) {
        Ok(kid) => {
            println!("wrote a new {alg} key to {} (kid {kid})", path.display());
            println!("add it to [oauth] signing_keys; see README \"Key rotation\" for the order");
            ExitCode::SUCCESS
        }
        Err(e) => done(Err(e.to_string())),
    }
}

/// Validates the file: the summary on stdout and each warning on stderr, exit 0;
/// with `strict`, any warning is an error (exit 1, no summary).
fn check_config(path: &std::path::Path, strict: bool) -> ExitCode {
    let config = match Config::load(path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    if strict && !config.warnings.is_empty() {
        for w in &config.warnings {
            eprintln!("error: {w}");
        }
        eprintln!(
            "error: {} warning(s), refused by --strict",
            config.warnings.len()
        );
        return ExitCode::FAILURE;
    }
    print!("{}", config.summary());
    for w in &config.warnings {
        eprintln!("warning: {w}");
    }
    ExitCode::SUCCESS
}

/// Exit 0, or print the error and exit 1.
fn done(result: cli::CliResult<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn serve(path: &std::path::Path, format: LogFormat) -> ExitCode {
    // No log line carries a credential: the access log has the path without the
    // query, and nothing else logs request data.
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    match format {
        LogFormat::Text => tracing_subscriber::fmt()
            .with_ansi(std::io::stdout().is_terminal())
            .with_env_filter(filter)
            .init(),
        LogFormat::Json => tracing_subscriber::fmt()
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_env_filter(filter)
            .init(),
    }
    let config = match Config::load(path) {
        Ok(c) => Arc::new(c),
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    config.log_warnings();
    // The workers run their own runtimes; this one only waits for signals and sweeps.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(config.server.listen)
            .await
            .map_err(|e| {
                format!(
                    "cannot listen on {} (server.listen): {e}",
                    config.server.listen
                )
            })?;
        // Installed before anything is served: a signal that comes early is handled.
        let stop = whosthat::shutdown_signal().map_err(|e| e.to_string())?;
        // SIGHUP re-reads the config file.
        let reload = whosthat::Reload {
            path: path.to_path_buf(),
            requests: whosthat::sighup_reloads().map_err(|e| e.to_string())?,
        };
        whosthat::serve_with(config, listener, stop, Some(reload))
            .await
            .map_err(|e| e.to_string())
    });
    match result {
        Ok(()) => {
            tracing::info!("stopped");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn hash_password() -> ExitCode {
    match cli::read_password() {
        Ok(password) => {
            println!("{}", whosthat::password::hash_password(password.as_bytes()));
            ExitCode::SUCCESS
        }
        Err(e) => done(Err(e)),
    }
}
