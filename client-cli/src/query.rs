//! `client-cli whoami`, `count` and `members`: questions asked over the WebSocket, answered with
//! JSON replies. Human output by default ([`crate::output`]), the server's reply as it is with
//! --json.

use anyhow::{bail, Context as _, Result};
use client_cli::frames;
use protocol::client::DEFAULT_PAGE_SIZE;
use protocol::cluster::ClientId;

use crate::cli::{Cli, CountArgs, MembersArgs, WhoamiArgs};
use crate::output::{self, print_lines};
use crate::request::{self, Requester};

pub async fn whoami(cli: &Cli, args: &WhoamiArgs) -> Result<()> {
    let mut requester = Requester::connect(cli, &args.ws, args.timeout, request::QUERY).await?;
    let mut req_id = 1;
    if let Some(uid) = &args.bind {
        requester
            .call(frames::bind_uid_request(uid, req_id), req_id)
            .await?;
        req_id += 1;
    }
    let text = requester
        .call(frames::whoami_request(req_id), req_id)
        .await?;
    requester.close().await;
    if args.json {
        return print_lines([text.as_str()]);
    }
    print_lines(output::whoami_lines(&output::parse_answer(&text)?)?)
}

pub async fn count(cli: &Cli, args: &CountArgs) -> Result<()> {
    const REQ_ID: u64 = 1;
    let request = frames::count_request(&args.group, REQ_ID)?;
    let mut requester = Requester::connect(cli, &args.ws, args.timeout, request::QUERY).await?;
    let text = requester.call(request, REQ_ID).await?;
    requester.close().await;
    if args.json {
        return print_lines([text.as_str()]);
    }
    let answer = output::parse_answer(&text)?;
    print_lines([output::count_line(&answer)?])?;
    if let Some(partial) = output::partial_answer(&output::missing_nodes(&answer)) {
        eprintln!("{partial}");
    }
    Ok(())
}

pub async fn members(cli: &Cli, args: &MembersArgs) -> Result<()> {
    let limit = args.limit.unwrap_or(DEFAULT_PAGE_SIZE);
    // Checks the group before connecting.
    frames::members_request(&args.group, limit, None, 1)?;
    let mut requester = Requester::connect(cli, &args.ws, args.timeout, request::QUERY).await?;
    let mut missing = Vec::new();
    let listed = list_members(&mut requester, args, limit, &mut missing).await;
    requester.close().await;
    listed?;
    if let Some(partial) = output::partial_answer(&missing) {
        eprintln!("{partial}");
    }
    Ok(())
}

/// Asks for the pages of members (the first, or with --all every one) and prints them.
async fn list_members(
    requester: &mut Requester,
    args: &MembersArgs,
    limit: u32,
    missing: &mut Vec<String>,
) -> Result<()> {
    let mut cursor: Option<ClientId> = None;
    for req_id in 1.. {
        let request = frames::members_request(&args.group, limit, cursor, req_id)?;
        let text = requester.call(request, req_id).await?;
        let answer = output::parse_answer(&text)?;
        let page = output::members_page(&answer)?;
        if args.json {
            print_lines([text.as_str()])?;
        } else {
            print_lines(&page.lines)?;
            output::add_missing(missing, output::missing_nodes(&answer));
        }
        match page.cursor {
            Some(next) if args.all => {
                let next: ClientId = next
                    .parse()
                    .with_context(|| format!("the gateway's cursor {next:?} is not a client id"))?;
                if cursor == Some(next) {
                    bail!("the gateway's cursor did not move on ({next}): stopping");
                }
                cursor = Some(next);
            }
            Some(_) => {
                if !args.json {
                    eprintln!("more members follow: --all lists them all");
                }
                return Ok(());
            }
            None => return Ok(()),
        }
    }
    Ok(())
}
