//! The admin API's cluster commands: `bind`, `unbind` (orders), `groups`, `clients`, `nodes`
//! (lookups). Human output by default ([`crate::output`]), the gateway's answer as it is with
//! --json.

use anyhow::{bail, Result};
use client_cli::frames;
use serde_json::Value;

use crate::admin::Admin;
use crate::cli::{BindArgs, Cli, ClientsArgs, GroupsArgs, NodesArgs, UnbindArgs};
use crate::output::{self, print_lines};

/// Prints the answer's `text` as it is (`json`) or its human `lines`, then (human output only)
/// the partial-answer line on stderr.
fn print_answer(
    json: bool,
    answer: &Value,
    text: &str,
    lines: impl FnOnce(&Value) -> Result<Vec<String>>,
) -> Result<()> {
    if json {
        return print_lines([text.trim_end()]);
    }
    print_lines(lines(answer)?)?;
    if let Some(partial) = output::partial_answer(&output::missing_nodes(answer)) {
        eprintln!("{partial}");
    }
    Ok(())
}

pub async fn bind(cli: &Cli, args: &BindArgs) -> Result<()> {
    let admin = Admin::new(cli, &args.admin)?;
    let url = admin.url(&["api", "bind_uid"], &[])?;
    let body = frames::bind_body(args.client_id, &args.uid);
    let unsure = "the uid may or may not have been bound";
    let (answer, text) = admin.post_json(url, body, unsure).await?;
    print_answer(args.json, &answer, &text, output::applied_lines)
}

pub async fn unbind(cli: &Cli, args: &UnbindArgs) -> Result<()> {
    let body = match (&args.client, &args.uid) {
        (Some(client_id), None) => frames::unbind_client_body(*client_id),
        (None, Some(uid)) => frames::unbind_uid_body(uid),
        // clap requires exactly one of them.
        _ => bail!("give --client CLIENT_ID or --uid UID"),
    };
    let admin = Admin::new(cli, &args.admin)?;
    let url = admin.url(&["api", "unbind_uid"], &[])?;
    let unsure = "the uid may or may not have been unbound";
    let (answer, text) = admin.post_json(url, body, unsure).await?;
    print_answer(args.json, &answer, &text, output::applied_lines)
}

pub async fn groups(cli: &Cli, args: &GroupsArgs) -> Result<()> {
    let admin = Admin::new(cli, &args.admin)?;
    let mut cursor: Option<String> = None;
    let mut missing = Vec::new();
    loop {
        let mut query = Vec::new();
        if let Some(limit) = args.limit {
            query.push(("limit", limit.to_string()));
        }
        if let Some(cursor) = &cursor {
            query.push(("cursor", cursor.clone()));
        }
        let url = admin.url(&["api", "groups"], &query)?;
        let (answer, text) = admin.get_json(url).await?;
        let page = output::groups_page(&answer)?;
        if args.json {
            print_lines([text.trim_end()])?;
        } else {
            print_lines(&page.lines)?;
            output::add_missing(&mut missing, output::missing_nodes(&answer));
        }
        match page.cursor {
            Some(next) if args.all => {
                if cursor.as_ref() == Some(&next) {
                    bail!("the gateway's cursor did not move on ({next:?}): stopping");
                }
                cursor = Some(next);
            }
            Some(_) => {
                if !args.json {
                    eprintln!("more groups follow: --all lists them all");
                }
                break;
            }
            None => break,
        }
    }
    if let Some(partial) = output::partial_answer(&missing) {
        eprintln!("{partial}");
    }
    Ok(())
}

pub async fn clients(cli: &Cli, args: &ClientsArgs) -> Result<()> {
    let admin = Admin::new(cli, &args.admin)?;
    match (&args.client_id, &args.uid) {
        (Some(client_id), None) => {
            let id = client_id.to_string();
            let url = admin.url(&["api", "clients", &id], &[])?;
            let (answer, text) = admin.get_json(url).await?;
            print_answer(args.json, &answer, &text, output::client_lines)
        }
        (None, Some(uid)) => {
            let url = admin.url(&["api", "uids", uid.as_str()], &[])?;
            let (answer, text) = admin.get_json(url).await?;
            print_answer(args.json, &answer, &text, output::uid_lines)
        }
        // clap requires exactly one of them.
        _ => bail!("give CLIENT_ID or --uid UID"),
    }
}

pub async fn nodes(cli: &Cli, args: &NodesArgs) -> Result<()> {
    let admin = Admin::new(cli, &args.admin)?;
    let url = admin.url(&["api", "nodes"], &[])?;
    let (answer, text) = admin.get_json(url).await?;
    print_answer(args.json, &answer, &text, output::nodes_lines)
}
