//! Where results go: JSON Lines events and human tables.
pub mod api;
pub mod jsonl;
pub mod table;
