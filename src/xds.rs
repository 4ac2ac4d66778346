//! The xDS server: a store of versioned, pre-encoded resources grouped by node kind, and the
//! delta and state-of-the-world streams that serve them (ADS and the per-type services).

pub mod node;
pub mod resource;
pub mod server;
pub mod store;
pub mod stream;
pub mod types;
pub mod wire;

pub use node::{GroupKey, PlacementError, Role};
pub use resource::{Entry, XdsResource};
pub use server::{TlsFiles, XdsServer};
pub use store::{Debounce, PublishError, Store, TypeUpdate, Update};
pub use types::ResourceType;
