//! What to attach to: ELF symbols, USDT notes, processes and their mappings.
pub mod elf;
pub mod process;
pub mod usdt;
