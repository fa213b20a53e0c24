//! Updraft Lua host: the Cumulus server-application API on mlua.
//!
//! Not implemented yet: this crate is filled by the Lua applications issue. It exports nothing until then.
