//! Updraft control plane: the handshake service ([`handshake`], [`dh`]), session-ID allocation
//! ([`ids`]), the NetConnection layer ([`netconn`]), NetGroup bootstrapping ([`groups`]) and
//! the application seam ([`apps`]), run by [`service`] over the [`ipc`] links to the
//! data-plane workers.

pub mod apps;
pub mod dh;
pub mod groups;
pub mod handshake;
pub mod ids;
pub mod ipc;
pub mod netconn;
pub mod service;
pub mod streams;
