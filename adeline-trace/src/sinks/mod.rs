//! Where results go: JSON Lines events and human tables.
pub mod api;
pub mod dashboard;
pub mod history;
pub mod jsonl;
pub mod prometheus;
pub mod table;
pub mod trace_out;
