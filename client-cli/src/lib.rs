//! The WebSocket client side of the group push protocol, shared by the `client-cli` binary and
//! the load generator:
//!
//! - [`frames`]: the JSON requests sent and how replies are read (pure).
//! - [`conn`]: connecting (`ws://`, or `wss://` against the system's trusted roots), reading
//!   text frames under a deadline, clean close.

pub mod conn;
pub mod frames;
