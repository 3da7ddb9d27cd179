//! The daemon's log output: plain text (colours only on a terminal) or one JSON object per
//! line for log collectors; the level filter comes from RUST_LOG (default `info`).

use std::io::IsTerminal;

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Text,
    Json,
}

/// Install the subscriber writing to stderr (the journal, a file or a terminal).
pub fn init(format: Format) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        // Colour codes only where a person reads them: never in a file or the journal.
        Format::Text => builder
            .with_ansi(std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none())
            .try_init(),
        Format::Json => builder.json().with_ansi(false).try_init(),
    };
}
