//! Output formats: aligned tables for people, JSON for scripts.

use serde::Serialize;

/// `-o table|json`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    #[default]
    Table,
    Json,
}

/// `-o table|wide|json`, for views that have more columns to show on request.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum ViewFormat {
    #[default]
    Table,
    /// The table with ids, slots and counts as well.
    Wide,
    Json,
}

/// Pretty JSON with a final newline, as every `-o json` prints it.
pub fn json<T: Serialize>(value: &T) -> Result<String, serde_json::Error> {
    let mut out = serde_json::to_string_pretty(value)?;
    out.push('\n');
    Ok(out)
}
