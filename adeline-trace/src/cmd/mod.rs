//! The subcommands, one file each (the API client sits with `summary`).
pub mod compare;
pub mod completions;
pub mod history;
pub mod list;
pub mod profile;
pub mod run;
pub mod summary;
