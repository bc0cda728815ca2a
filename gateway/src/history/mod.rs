//! History and recovery on top of the bus, for the groups `--history` names ([`policy`]).
//!
//! - A client's send to such a group is not delivered here directly: it goes to the store
//!   (`Bus::publish_history`), which gives it the group's next offset and brings it back,
//!   positioned, to every gateway with members of the group, this one included.
//! - Each worker keeps, per history group with positioned members, the last position it
//!   delivered ([`stream`]): a duplicate is dropped, and a hole (a message the carrier lost)
//!   is filled from the store before the next message reaches positioned members; what the
//!   store no longer has is counted (`history_unrepaired`).
//! - A positioned join answers with the group's position; with `recover`, the member first
//!   receives what it missed from the store, then the live messages, with no duplicate and no
//!   gap at the seam ([`recovery`]).
//!
//! Members that did not ask for positions receive the raw text as the seed does, in the order
//! it arrives; groups without history never enter this module.

pub mod policy;
pub(crate) mod recovery;
pub(crate) mod stream;
