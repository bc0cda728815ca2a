//! Frames that never become messages are bounded too (issue: "control frames are not rate
//! limited"): a client sending pings, or continuation frames of a message it never finishes, as
//! fast as it can is closed with 1008 once over `--max-control-frames-per-second`, and nobody
//! else notices; a client within the limit is served as before.

use anyhow::{ensure, Result};
use e2e::{expect_quiet, stat, Gateway, GatewayConfig, RawFrame, RECV_TIMEOUT};

async fn gateway() -> Result<Gateway> {
    Gateway::start(
        GatewayConfig::embedded("gateway")
            .workers(1)
            .arg("--max-control-frames-per-second")
            .arg("100"),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_pings_is_closed_with_1008() -> Result<()> {
    let gateway = gateway().await?;
    let mut bystander = gateway.connect("bystander").await?;
    bystander.join("g").await?;
    let mut flooder = gateway.connect("flooder").await?;
    // Within the burst: served as usual (pongs are the library's, and not messages).
    flooder.send_frames(&vec![RawFrame::ping("x"); 50]).await?;
    flooder.send_to_group("g", "still fine").await?;
    bystander.expect_text("still fine").await?;
    // Then far over it.
    let _ = flooder.send_frames(&vec![RawFrame::ping(""); 5_000]).await;
    ensure!(flooder.expect_close(RECV_TIMEOUT).await? == 1008);

    let mut sender = gateway.connect("sender").await?;
    sender.send_to_group("g", "after").await?;
    bystander.expect_text("after").await?;
    let stats = gateway.admin.stats().await?;
    ensure!(
        stat(&stats, "/workers/0/rate_limit_closes") == Some(1),
        "{stats:#}"
    );
    expect_quiet([&mut bystander, &mut sender]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_of_endless_empty_fragments_is_closed_with_1008() -> Result<()> {
    let gateway = gateway().await?;
    let mut bystander = gateway.connect("bystander").await?;
    bystander.join("g").await?;
    let mut flooder = gateway.connect("flooder").await?;
    let mut frames = vec![RawFrame::text(r#"{"cmd":"#).fin(false)];
    frames.extend(vec![RawFrame::continuation("").fin(false); 5_000]);
    let _ = flooder.send_frames(&frames).await;
    ensure!(flooder.expect_close(RECV_TIMEOUT).await? == 1008);

    let mut sender = gateway.connect("sender").await?;
    sender.send_to_group("g", "unaffected").await?;
    bystander.expect_text("unaffected").await?;
    expect_quiet([&mut bystander, &mut sender]).await
}
