//! xlb's agent as a library, so tests drive the real thing.
pub mod agent;
pub mod balancer;
pub mod config;
pub mod control;
pub mod dataplane;
pub mod health;
pub mod maglev;
pub mod registry;
pub mod status;

/// The XDP object built by build.rs, aligned for the ELF parser.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb-ebpf"));
