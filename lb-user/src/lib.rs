//! xlb's agent as a library, so tests drive the real thing. Where things live:
//!
//! - [`model`]: the typed model (addresses, endpoints, targets) and the config file;
//! - [`state`]: control-plane state: the registry of target groups, the runtime overlay;
//! - [`health`]: the health-check state machine and the probes;
//! - [`dataplane`]: the data-plane trait, its aya implementation, the reconciler, Maglev;
//! - [`agent`]: the one owner of all state and its event loop;
//! - [`api`]: the control API: shared request/response types, server, client, status;
//! - [`cli`]: the `xlb` command line.
#![forbid(unsafe_code)]

pub mod agent;
pub mod announce;
pub mod api;
pub mod cli;
pub mod dataplane;
pub mod doctor;
pub mod health;
pub mod iproute;
pub mod metrics;
pub mod model;
pub mod state;

/// The XDP object built by build.rs, aligned for the ELF parser.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb-ebpf"));
/// The decapsulation program's object (`xlb decap`), built alongside.
pub static DECAP_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb-decap"));
