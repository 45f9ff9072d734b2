//! What is kept at home: the state file (`store`, re-exported here), the archive of finished
//! sessions (`archive`), and the atomic replacement both use (`atomic`).

pub mod archive;
pub mod atomic;
mod store;

pub use store::*;
