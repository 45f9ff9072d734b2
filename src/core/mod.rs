//! The pure core: the data model and the rules over it, no I/O; what needs the time takes
//! `now` as a parameter.

pub(crate) mod lifecycle;
pub mod model;
pub(crate) mod naming;
pub(crate) mod pool;
pub(crate) mod reconcile;
pub(crate) mod settle;
pub(crate) mod unattended;
