//! The seed scenario over several gateways, as every bus carrier's tests run it: on each
//! gateway, clients in red, blue, both or neither; senders of each kind on every gateway; every
//! member receives each sender's stream for its groups once, in order, and nothing else.
//!
//! A test joins the members ([`join_members`]), waits until its engine routes both groups to
//! every gateway (each carrier sees that its own way), then runs [`exchange`].

use anyhow::Result;
use futures_util::future::try_join_all;

use crate::{expect_quiet, publish_tagged, tagged_streams, Client, Gateway};

/// The groups of the scenario.
pub const GROUPS: [&str; 2] = ["red", "blue"];

/// The groups of the `i`-th client of a gateway: two in red, one in blue, one in both, one in
/// neither, repeating.
pub fn groups_of(i: usize) -> &'static [&'static str] {
    match i % 5 {
        0 | 1 => &["red"],
        2 => &["blue"],
        3 => &["red", "blue"],
        _ => &[],
    }
}

/// A member of the scenario and its groups.
pub type Member = (&'static [&'static str], Client);

/// `per_gateway` clients on each gateway, named after its letter (`a0`, `a1`, ..., `b0`, ...),
/// each joined to [`groups_of`] its index.
pub async fn join_members(gateways: &[&Gateway], per_gateway: usize) -> Result<Vec<Member>> {
    let mut members = Vec::new();
    for (gateway, letter) in gateways.iter().zip('a'..) {
        for i in 0..per_gateway {
            let mut client = gateway.connect(format!("{letter}{i}")).await?;
            for group in groups_of(i) {
                client.join(group).await?;
            }
            members.push((groups_of(i), client));
        }
    }
    Ok(members)
}

/// Each of `senders` (client names) sends `count` tagged messages to both groups; every member
/// must receive each sender's stream for its groups exactly once and in order, then nothing.
pub async fn exchange(members: &mut [Member], senders: &[&str], count: usize) -> Result<()> {
    try_join_all(
        members
            .iter_mut()
            .filter(|(_, c)| senders.contains(&c.name()))
            .map(|(_, sender)| publish_tagged(sender, &GROUPS, count)),
    )
    .await?;
    try_join_all(members.iter_mut().map(|(groups, client)| {
        client.expect_streams(tagged_streams(groups, senders, &GROUPS, count))
    }))
    .await?;
    expect_quiet(members.iter_mut().map(|(_, client)| client)).await
}
