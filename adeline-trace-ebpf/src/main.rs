//! Kernel programs of adeline-trace. One file per concern; maps.rs holds
//! every shared map (python.rs and usdt.rs keep their own).
#![no_std]
#![no_main]

mod alloc;
mod follow;
mod gauge;
mod maps;
mod memory;
mod profile;
mod python;
mod rss_btf;
mod stage;
mod unwind;
mod usdt;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[link_section = "license"]
#[no_mangle]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
