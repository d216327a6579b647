//! The relay's own logs: `tracing` to standard error, text or JSON.
//!
//! Rules: no event `args` and no raw input at info level or above; quarantine logs name
//! the source, offset and reason only. No credential at any level: the AWS SDK's own
//! debug and trace output prints resolved credentials and signing inputs, so its targets
//! (`aws_*`) are capped at info whatever `log.level` or `RUST_LOG` asks for.

use crate::config::{LogConfig, LogFormat};
use std::io::IsTerminal;
use tracing::{Level, Metadata};
use tracing_subscriber::filter::{filter_fn, FilterExt};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// Whether a log line (or span) may be written at all, whatever the level asked for:
/// nothing below info from the AWS SDK's crates.
pub fn may_log(meta: &Metadata<'_>) -> bool {
    *meta.level() <= Level::INFO || !meta.target().starts_with("aws_")
}

/// Installs the global subscriber. `RUST_LOG` overrides `log.level`.
pub fn init(cfg: &LogConfig) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&cfg.level));
    let filter = filter.and(filter_fn(may_log));
    // A closed stderr must not take the relay down: drop log lines instead.
    let fmt = tracing_subscriber::fmt::layer()
        .with_ansi(std::io::stderr().is_terminal())
        .log_internal_errors(false)
        .with_writer(std::io::stderr);
    let registry = tracing_subscriber::registry();
    let _ = match cfg.format {
        LogFormat::Text => registry.with(fmt.with_filter(filter)).try_init(),
        LogFormat::Json => registry
            .with(fmt.json().flatten_event(true).with_filter(filter))
            .try_init(),
    };
}
