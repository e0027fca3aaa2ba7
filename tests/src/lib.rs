//! Test hosts for xlb: network namespaces, veth links, and the demo rig, all torn down on drop
//! (also when a test panics). Every namespace name starts with `xlb-`.
pub mod dsr_rig;
pub mod fleet_rig;
pub mod lab;
pub mod netns;
pub mod procs;
pub mod rig;

pub use netns::{BpfFs, Netns, sh};
pub use rig::{Rig, RigSpec, Setup};
