//! What is kept at home: the state file (`store`, re-exported here), the archive of finished
//! sessions (`archive`), and the atomic replacement both use (`atomic`).

pub(crate) mod archive;
pub(crate) mod atomic;
mod store;

pub use store::*;
