//! Updraft control plane. So far it holds [`ipc`], the codec of the messages exchanged with the
//! data-plane workers; the handshake service and the directories follow.

pub mod ipc;
