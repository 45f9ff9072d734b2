//! What people see: terminal output (`terminal`, re-exported here: stdout for data, stderr for
//! progress and warnings), tables and blocks (`render`, `report`), live progress lines
//! (`progress`) and text made safe for a terminal (`sanitize`).

pub(crate) mod progress;
pub(crate) mod render;
pub(crate) mod report;
pub mod sanitize;
mod terminal;

pub use terminal::*;
