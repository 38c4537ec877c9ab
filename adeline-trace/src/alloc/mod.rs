//! Alloc mode (`run --alloc`): the options ([`AllocSpec`]) and what is read
//! back from the kernel maps ([`maps`]).
pub mod maps;
pub mod spec;

pub use spec::AllocSpec;
