//! Build identity: crate version and the git commit it was built from
//! (`SONDE_GIT_SHA` is set by build.rs, "unknown" outside a git checkout).

pub const VERSION: &str = env!("CARGO_PKG_VERSION");
pub const GIT_SHA: &str = env!("SONDE_GIT_SHA");
pub const LONG: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (git ",
    env!("SONDE_GIT_SHA"),
    ")"
);
