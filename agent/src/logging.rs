//! Log set-up: one readable line per event, or JSON with `--log-format json`.

use crate::config::LogFormat;
use std::io::IsTerminal;
use tracing_subscriber::EnvFilter;

pub fn init(format: LogFormat) {
    // py-spy logs every dump at info ("Got virtual memory maps…", "Found libpython…"):
    // quiet it whatever level is asked for, unless the operator names it explicitly.
    let mut spec = std::env::var("HANGWATCH_LOG").unwrap_or_else(|_| "info".to_string());
    if !spec.contains("py_spy") && !spec.contains("remoteprocess") {
        spec.push_str(",py_spy=warn,remoteprocess=warn");
    }
    let filter = EnvFilter::try_new(&spec).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none())
        .with_target(false);
    let _ = match format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.try_init(),
    };
}
