//! The pure core: the data model and the rules over it, no I/O; what needs the time takes
//! `now` as a parameter.

pub mod lifecycle;
pub mod model;
pub mod naming;
pub mod pool;
pub mod reconcile;
pub mod unattended;
