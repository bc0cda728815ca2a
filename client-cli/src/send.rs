//! `client-cli send`, `send-all`, `send-uid` and `send-client`: send one message, wait for the
//! ack (see --acks for servers that send none), close cleanly.

use anyhow::Result;
use client_cli::frames;

use crate::cli::{
    AckArgs, Acks, Cli, Secs, SendAllArgs, SendArgs, SendClientArgs, SendUidArgs, WsArgs,
};
use crate::request::{self, Requester};

const REQ_ID: u64 = 1;

pub async fn run(cli: &Cli, args: &SendArgs) -> Result<()> {
    let request =
        frames::send_group_request(&args.group, &args.message, args.json, &args.exclude, REQ_ID)?;
    send_one(cli, (&args.ws, args.acks), args.timeout, request).await
}

pub async fn run_all(cli: &Cli, args: &SendAllArgs) -> Result<()> {
    let request = frames::send_all_request(&args.message, args.json, &args.exclude, REQ_ID)?;
    send_one(cli, (&args.ws, args.acks), args.timeout, request).await
}

pub async fn run_uid(cli: &Cli, args: &SendUidArgs) -> Result<()> {
    let request = frames::send_uid_request(&args.uids, &args.message, args.json, REQ_ID)?;
    send_one(cli, (&args.ws, args.acks), args.timeout, request).await
}

pub async fn run_client(cli: &Cli, args: &SendClientArgs) -> Result<()> {
    let request = frames::send_client_request(args.client_id, &args.message, args.json, REQ_ID)?;
    send_one(cli, (&args.ws, args.acks), args.timeout, request).await
}

/// Connects, sends `request` (numbered [`REQ_ID`]), waits for its ack, closes. A server that
/// answers nothing within --ack-timeout (--acks auto) is a seed-protocol server: the message
/// was written, which is all its protocol promises, so this succeeds with a warning.
async fn send_one(
    cli: &Cli,
    (ws, acks): (&WsArgs, AckArgs),
    timeout: Secs,
    request: String,
) -> Result<()> {
    let mut requester = Requester::connect(cli, ws, timeout, request::MESSAGE).await?;
    let acked = requester.exchange(request, REQ_ID, acks.grace()).await?;
    requester.close().await;
    if acked.is_none() && acks.acks == Acks::Auto {
        eprintln!(
            "{}",
            request::no_replies_warning(
                acks.ack_timeout,
                "the message was sent, its delivery is unconfirmed (--acks none does not wait)"
            )
        );
    }
    Ok(())
}
