//! Which code is running: the crate's version and the commit it was built from
//! (`build.rs`), said the same way by `--version`, the log, the metrics and bundles.

pub const VERSION: &str = env!("CARGO_PKG_VERSION");
pub const COMMIT: &str = env!("HANGWATCH_COMMIT");
/// What `hangwatch --version` prints after the name.
pub const LONG: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("HANGWATCH_COMMIT"),
    ")"
);
