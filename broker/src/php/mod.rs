//! PHP Channel clients (Workerman's `Channel\Client`, php-fpm scripts writing a framed
//! `publish`): the broker takes the place of `Channel\Server` for them.
//!
//! - [`hub`]: their channels and queues, shared by every PHP connection, and the
//!   `send_to_group` bridge from the gateways' groups.
//! - `conn`: one PHP connection: frames in (`protocol::php`), commands applied, `event` and
//!   `queue` frames out through the same bounded queue and writer as a gateway link.
//!
//! A PHP `publish` on `send_to_group` with `group_id` and `message` also goes to the gateways'
//! group, as a client's `send_to_group` would; see docs/php-channel.md.

mod conn;
pub mod hub;

pub(crate) use conn::{serve_php, serve_php_stream};
