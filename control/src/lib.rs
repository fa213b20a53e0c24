//! Updraft control plane: handshake service, session-ID allocation, directories, application
//! registry, and the IPC codec shared with the data plane.
//!
//! Not implemented yet: this crate is filled by the server issue. It exports nothing until then.
