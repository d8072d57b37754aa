//! Logging set-up shared by the Weft binaries.
//!
//! Every binary takes `--log-format plain|json` and a filter (`--log-level`, or `RUST_LOG` when
//! set), so operators get the same knobs everywhere.

use std::io::IsTerminal;

use clap::{Args, ValueEnum};
use tracing_subscriber::{fmt, prelude::*, EnvFilter};

/// How log lines are written to stderr.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Plain,
    /// One JSON object per line, for log collectors.
    Json,
}

/// Command-line options for logging, flattened into each binary's arguments.
#[derive(Debug, Clone, Args)]
pub struct LogOptions {
    /// Log line format.
    #[arg(long, value_enum, default_value_t = LogFormat::Plain, env = "WEFT_LOG_FORMAT")]
    pub log_format: LogFormat,
    /// Log filter, in `tracing` EnvFilter syntax (e.g. `info,mesh_node=debug`). `RUST_LOG`, when
    /// set, takes precedence.
    #[arg(long, default_value = "info", env = "WEFT_LOG_LEVEL")]
    pub log_level: String,
}

/// Errors from logging set-up.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// The filter string does not parse.
    #[error("invalid log filter {filter:?}: {source}")]
    BadFilter {
        filter: String,
        #[source]
        source: tracing_subscriber::filter::ParseError,
    },
    /// A global subscriber was already installed (set-up ran twice).
    #[error("logging was already initialised: {0}")]
    AlreadyInitialised(#[from] tracing_subscriber::util::TryInitError),
}

/// Installs the global `tracing` subscriber that writes to stderr.
pub fn init(options: &LogOptions) -> Result<(), TelemetryError> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(from_env) if !from_env.is_empty() => from_env,
        _ => options.log_level.clone(),
    };
    let env_filter = EnvFilter::try_new(&filter).map_err(|source| TelemetryError::BadFilter {
        filter: filter.clone(),
        source,
    })?;
    let registry = tracing_subscriber::registry().with(env_filter);
    match options.log_format {
        LogFormat::Plain => registry
            .with(
                fmt::layer()
                    // Colour only for a person at a terminal, never into files or collectors.
                    .with_ansi(std::io::stderr().is_terminal())
                    .with_writer(std::io::stderr),
            )
            .try_init()?,
        LogFormat::Json => registry
            .with(
                fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_writer(std::io::stderr),
            )
            .try_init()?,
    }
    Ok(())
}
