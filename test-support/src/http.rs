//! A server's admin HTTP endpoint, as the tests read it: probes, `/api/stats`, `/metrics`.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use serde_json::Value;

use crate::wait::wait_until;
use crate::STATS_TIMEOUT;

/// The time one admin HTTP request may take.
const HTTP_TIMEOUT: Duration = Duration::from_secs(5);

/// A number in a stats document, by JSON pointer (e.g. `/bus/subscriptions`).
pub fn stat(stats: &Value, pointer: &str) -> Option<u64> {
    stats.pointer(pointer)?.as_u64()
}

/// The value of the sample whose series (name and labels) is exactly `series`, in an
/// OpenMetrics text.
pub fn sample(text: &str, series: &str) -> Option<u64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// A server's admin HTTP endpoint.
#[derive(Debug, Clone)]
pub struct Admin {
    name: String,
    addr: SocketAddr,
    http: reqwest::Client,
}

impl Admin {
    /// The endpoint at `addr`; `name` labels the server in messages.
    pub fn new(name: &str, addr: SocketAddr) -> Result<Admin> {
        let http = reqwest::Client::builder()
            .timeout(HTTP_TIMEOUT)
            .no_proxy()
            .build()
            .context("cannot build the HTTP client")?;
        Ok(Admin {
            name: name.to_owned(),
            addr,
            http,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://ADDR` followed by `path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// The HTTP client, for requests the methods below do not make.
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// `GET path`: the status code and the body.
    pub async fn get(&self, path: &str) -> Result<(u16, String)> {
        self.send(self.http.get(self.url(path))).await
    }

    /// Sends `request`: the status code and the body.
    pub async fn send(&self, request: reqwest::RequestBuilder) -> Result<(u16, String)> {
        let response = request.send().await.with_context(|| self.name.clone())?;
        let status = response.status().as_u16();
        let body = response
            .text()
            .await
            .with_context(|| format!("{}: reading a body", self.name))?;
        Ok((status, body))
    }

    /// Sends `request`, whose answer must be JSON: the status code and the document.
    pub async fn call(&self, request: reqwest::RequestBuilder) -> Result<(u16, Value)> {
        let (status, body) = self.send(request).await?;
        let value = serde_json::from_str(&body)
            .with_context(|| format!("{}: {status}: not JSON: {body}", self.name))?;
        Ok((status, value))
    }

    /// `GET path`, which must answer 200 with JSON.
    pub async fn get_json(&self, path: &str) -> Result<Value> {
        let (status, body) = self.get(path).await?;
        ensure!(
            status == 200,
            "{}: GET {path} answered {status}: {body}",
            self.name
        );
        serde_json::from_str(&body)
            .with_context(|| format!("{}: GET {path} is not JSON: {body}", self.name))
    }

    /// `GET /api/stats`, which must answer 200 with a JSON object.
    pub async fn stats(&self) -> Result<Value> {
        let stats = self.get_json("/api/stats").await?;
        if !stats.is_object() {
            bail!("{}: /api/stats is not a JSON object: {stats}", self.name);
        }
        Ok(stats)
    }

    /// Polls `/api/stats` until `pred` holds; returns the matching stats.
    pub async fn wait_for_stats(&self, what: &str, pred: impl Fn(&Value) -> bool) -> Result<Value> {
        let what = format!("{}: {what}", self.name);
        wait_until(&what, STATS_TIMEOUT, || async {
            let stats = self.stats().await?;
            ensure!(pred(&stats), "{stats}");
            Ok(stats)
        })
        .await
    }

    /// Polls `/api/stats` until each counter (a JSON pointer) has its value; returns the
    /// stats.
    pub async fn wait_for_counters(&self, what: &str, counters: &[(&str, u64)]) -> Result<Value> {
        self.wait_for_stats(what, |s| {
            counters
                .iter()
                .all(|&(pointer, value)| stat(s, pointer) == Some(value))
        })
        .await
    }

    /// Polls `GET path` until it answers `status`.
    pub async fn wait_for_status(&self, path: &str, status: u16) -> Result<()> {
        let what = format!("{}: GET {path} answers {status}", self.name);
        wait_until(&what, STATS_TIMEOUT, || async {
            let (got, body) = self.get(path).await?;
            ensure!(got == status, "{got} {body}");
            Ok(())
        })
        .await
    }

    /// `GET /metrics`, which must answer 200 with `content_type` and a complete OpenMetrics
    /// text (ending with `# EOF`).
    pub async fn metrics(&self, content_type: &str) -> Result<String> {
        let response = self
            .http
            .get(self.url("/metrics"))
            .send()
            .await
            .with_context(|| format!("{}: GET /metrics", self.name))?;
        ensure!(
            response.status() == 200,
            "{}: /metrics answered {}",
            self.name,
            response.status()
        );
        let got = response.headers().get("content-type").cloned();
        ensure!(
            got.as_ref().and_then(|v| v.to_str().ok()) == Some(content_type),
            "{}: /metrics content type {got:?}",
            self.name
        );
        let text = response.text().await?;
        ensure!(
            text.ends_with("# EOF\n"),
            "{}: no EOF marker:\n{text}",
            self.name
        );
        Ok(text)
    }

    /// Scrapes until `series` has `value` (for counters updated after the fact), then returns
    /// the scrape.
    pub async fn wait_for_metric(
        &self,
        content_type: &str,
        series: &str,
        value: u64,
    ) -> Result<String> {
        let what = format!("{}: {series} is {value}", self.name);
        wait_until(&what, STATS_TIMEOUT, || async {
            let text = self.metrics(content_type).await?;
            ensure!(sample(&text, series) == Some(value), "{text}");
            Ok(text)
        })
        .await
    }
}
