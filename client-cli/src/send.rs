//! `client-cli send`, `send-all`, `send-uid` and `send-client`: send one message, wait for the
//! ack, close cleanly.

use anyhow::Result;
use client_cli::frames;

use crate::cli::{Cli, Secs, SendAllArgs, SendArgs, SendClientArgs, SendUidArgs};
use crate::request::{self, Requester};

const REQ_ID: u64 = 1;

pub async fn run(cli: &Cli, args: &SendArgs) -> Result<()> {
    let request =
        frames::send_group_request(&args.group, &args.message, args.json, &args.exclude, REQ_ID)?;
    send_one(cli, args.timeout, request).await
}

pub async fn run_all(cli: &Cli, args: &SendAllArgs) -> Result<()> {
    let request = frames::send_all_request(&args.message, args.json, &args.exclude, REQ_ID)?;
    send_one(cli, args.timeout, request).await
}

pub async fn run_uid(cli: &Cli, args: &SendUidArgs) -> Result<()> {
    let request = frames::send_uid_request(&args.uids, &args.message, args.json, REQ_ID)?;
    send_one(cli, args.timeout, request).await
}

pub async fn run_client(cli: &Cli, args: &SendClientArgs) -> Result<()> {
    let request = frames::send_client_request(args.client_id, &args.message, args.json, REQ_ID)?;
    send_one(cli, args.timeout, request).await
}

/// Connects, sends `request` (numbered [`REQ_ID`]), waits for its ack, closes.
async fn send_one(cli: &Cli, timeout: Secs, request: String) -> Result<()> {
    let mut requester = Requester::connect(cli, timeout, request::MESSAGE).await?;
    requester.call(request, REQ_ID).await?;
    requester.close().await;
    Ok(())
}
