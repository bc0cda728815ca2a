//! The client edge: everything between a TCP socket and a parsed command.
//!
//! - `connection`: one task per client: TLS and WebSocket handshakes, reading commands (handed
//!   to `crate::cmd`), writing the outbox in batches, ping/idle, close codes.
//! - `limits`: connections per process and per client address (the acceptor holds a permit per
//!   socket), and the per-connection frame rate limit.
//! - `frame_meter`: counts the control and continuation frames a client sends (which never
//!   become messages) and stops a flood of them.
//! - `socket`: a plain client socket shared by its connection task and its worker's fan-out,
//!   which writes a batch's frames to it when nothing is pending.
//! - `wire`: a connection's end of the socket: the WebSocket library's stream, or, while the
//!   connection rests (nothing half read or unwritten), the socket alone.
//! - [`origin`]: the Origin allowlist checked in the handshake.
//! - [`join_token`]: signed join tokens (JWT) and the rights they grant a connection.

pub(crate) mod connection;
pub(crate) mod frame_meter;
pub mod join_token;
pub(crate) mod limits;
pub mod origin;
pub(crate) mod socket;
pub(crate) mod wire;
