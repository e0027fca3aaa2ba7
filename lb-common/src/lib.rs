//! The kernel<->userspace ABI of xlb, and the pure logic both sides need.
//!
//! Every map key and value here is `#[repr(C)]`, padding-free (explicit `_pad` fields, checked by
//! `const` size assertions) and valid when zeroed. Ports and addresses are kept as network-order
//! byte arrays, exactly as they sit in the packet, so neither side converts on the fast path.
#![cfg_attr(not(test), no_std)]
// `unsafe` only in `abi`'s `aya::Pod` impls (userspace feature), each with its argument.
#![deny(unsafe_code)]

pub mod abi;
pub mod csum;
pub mod hash;
pub mod limits;
pub mod rate;
pub mod stats;

pub use abi::*;
pub use stats::{DecapStat, Stat};
