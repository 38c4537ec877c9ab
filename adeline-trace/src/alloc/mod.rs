//! Alloc mode (`run --alloc`): which allocator functions are probed
//! ([`sites`]), the options ([`AllocSpec`]), and what is read back from the
//! kernel maps ([`report`]) and symbolized ([`symbolize`]).
pub mod maps;
pub mod report;
pub mod sites;
pub mod spec;
pub mod symbolize;

pub use spec::{parse_size, AllocSpec};
