//! The gateway's admin HTTP API, shared by its commands (`publish`, `bind`, `unbind`, `groups`,
//! `clients`, `nodes`): URLs under --admin-url, the bearer token, --timeout and Ctrl-C, and
//! reading its answers.

use anyhow::{anyhow, bail, Context as _, Result};
use client_cli::conn::{self, Interrupt, TimedOut, Waited};
use client_cli::frames;
use reqwest::Url;
use serde_json::Value;
use tokio::time::Instant;

use crate::cli::{AdminArgs, Cli, Secs};

#[derive(Debug)]
pub struct Admin {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
    timeout: Secs,
}

/// `base` (the --admin-url) followed by the path `segments`, each percent-encoded (`/`, `?`,
/// `%`, ... included), and the `query` pairs (form-encoded).
pub fn api_url(base: &str, segments: &[&str], query: &[(&str, String)]) -> Result<Url> {
    if let Some(dots) = segments.iter().find(|s| matches!(**s, "." | "..")) {
        bail!("{dots:?} cannot be looked up: a URL path cannot carry it");
    }
    let mut url = Url::parse(base).with_context(|| format!("--admin-url {base:?}"))?;
    url.path_segments_mut()
        .map_err(|()| anyhow!("--admin-url {base:?}: not an http:// URL"))?
        .pop_if_empty()
        .extend(segments);
    if !query.is_empty() {
        url.query_pairs_mut().extend_pairs(query);
    }
    Ok(url)
}

impl Admin {
    pub fn new(cli: &Cli, args: &AdminArgs) -> Result<Admin> {
        let http = reqwest::Client::builder()
            .connect_timeout(cli.connect_timeout.duration())
            .build()
            .context("cannot set up the HTTP client")?;
        Ok(Admin {
            http,
            base: args.admin_url.clone(),
            token: args.token.clone(),
            timeout: args.timeout,
        })
    }

    /// The URL of `segments` (and `query`) under --admin-url.
    pub fn url(&self, segments: &[&str], query: &[(&str, String)]) -> Result<Url> {
        api_url(&self.base, segments, query)
    }

    /// `GET url`: the answer's status and body.
    pub async fn get(&self, url: Url) -> Result<(u16, String)> {
        let request = self.http.get(url.clone());
        self.exchange(request, "GET", &url, None).await
    }

    /// `POST url` with a JSON `body`. `unsure` says what may or may not have happened when the
    /// answer does not come (timeout, Ctrl-C).
    pub async fn post(&self, url: Url, body: String, unsure: &str) -> Result<(u16, String)> {
        let request = self
            .http
            .post(url.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body);
        self.exchange(request, "POST", &url, Some(unsure)).await
    }

    /// `GET url`, then the JSON object it answered ([`frames::api_answer`]).
    pub async fn get_json(&self, url: Url) -> Result<(Value, String)> {
        let (status, text) = self.get(url).await?;
        Ok((frames::api_answer(status, &text)?, text))
    }

    /// `POST url` with `body`, then the JSON object it answered ([`frames::api_answer`]).
    pub async fn post_json(&self, url: Url, body: String, unsure: &str) -> Result<(Value, String)> {
        let (status, text) = self.post(url, body, unsure).await?;
        Ok((frames::api_answer(status, &text)?, text))
    }

    async fn exchange(
        &self,
        mut request: reqwest::RequestBuilder,
        method: &str,
        url: &Url,
        unsure: Option<&str>,
    ) -> Result<(u16, String)> {
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        let exchange = async {
            let response = request.send().await?;
            let status = response.status().as_u16();
            let text = response.text().await?;
            Ok::<_, reqwest::Error>((status, text))
        };
        let deadline = Instant::now().checked_add(self.timeout.duration());
        let mut interrupt = Interrupt::on_signals();
        let unsure = unsure.map(|u| format!("; {u}")).unwrap_or_default();
        match conn::wait(exchange, deadline, &mut interrupt).await {
            Waited::Done(answer) => answer.with_context(|| format!("cannot {method} {url}")),
            Waited::Deadline => Err(TimedOut(format!(
                "timed out after {} s waiting for {url}{unsure}",
                self.timeout
            ))
            .into()),
            Waited::Interrupted => bail!("interrupted before {url} answered{unsure}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(base: &str, segments: &[&str], query: &[(&str, String)]) -> String {
        api_url(base, segments, query).unwrap().to_string()
    }

    #[test]
    fn urls_under_the_admin_url() {
        for base in ["http://127.0.0.1:9090", "http://127.0.0.1:9090/"] {
            assert_eq!(
                url(base, &["api", "publish"], &[]),
                "http://127.0.0.1:9090/api/publish"
            );
        }
        assert_eq!(
            url("http://h:1/prefix/", &["api", "nodes"], &[]),
            "http://h:1/prefix/api/nodes"
        );
        assert!(api_url("not a url", &["api"], &[]).is_err());
        assert!(api_url("mailto:x@y", &["api"], &[]).is_err());
    }

    #[test]
    fn path_segments_are_percent_encoded() {
        assert_eq!(
            url("http://h:1", &["api", "uids", "a/b?c#d e%f\\g"], &[]),
            "http://h:1/api/uids/a%2Fb%3Fc%23d%20e%25f%5Cg"
        );
        assert_eq!(
            url("http://h:1", &["api", "uids", "é"], &[]),
            "http://h:1/api/uids/%C3%A9"
        );
        assert_eq!(
            url(
                "http://h:1",
                &["api", "clients", "5f0c1d2e3a4b6c7d-1-42"],
                &[]
            ),
            "http://h:1/api/clients/5f0c1d2e3a4b6c7d-1-42"
        );
        for dots in [".", ".."] {
            assert!(api_url("http://h:1", &["api", "uids", dots], &[]).is_err());
        }
    }

    #[test]
    fn queries_are_form_encoded() {
        let query = [("limit", "10".to_owned()), ("cursor", "a b&c=d".to_owned())];
        assert_eq!(
            url("http://h:1", &["api", "groups"], &query),
            "http://h:1/api/groups?limit=10&cursor=a+b%26c%3Dd"
        );
    }
}
