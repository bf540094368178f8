//! The network side: upper layer (PS3.8), DIMSE (PS3.7), one module per service (PS3.4), and
//! the acceptor that ties them to a connection.

pub mod dimse;
pub mod scp;
pub mod scu;
pub mod services;
pub mod ul;
pub mod worklist_scp;
