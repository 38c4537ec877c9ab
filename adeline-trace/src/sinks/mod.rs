//! Where results go: JSON Lines events and human tables.
pub mod jsonl;
pub mod table;
