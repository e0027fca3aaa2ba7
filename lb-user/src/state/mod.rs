//! Control-plane state: which targets each group has (the config file plus runtime changes),
//! their health and drains, and the runtime overlay kept in the state file.
pub mod overlay;
pub mod registry;

pub use overlay::{
    GroupOverlay, Overlay, RuleError, RuleKind, RulesOverlay, SourceRule, StateFileError,
};
pub use registry::{Group, Member, Registry, RegistryError};
