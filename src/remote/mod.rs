//! Everything about talking to a VM: the requests sent to it (`request`, built around the shell
//! files of `vm/` that run there), the answers read from it (`answer`), the transports that
//! carry them (`transport`: azlin or a local shell) and the streams that outlive their
//! connections (`stream`).

pub(crate) mod answer;
pub(crate) mod request;
pub(crate) mod stream;
pub(crate) mod transport;
