//! History and recovery (`--history`), on the embedded broker and the standalone one: offsets
//! and epochs, recovery after a disconnection with no duplicate and no gap, `recovered:false`
//! when the epoch changed or the history no longer reaches back, bounds, and raw members that
//! see no change.

use anyhow::{ensure, Context, Result};
use e2e::history::{join_positioned, next_positioned, send_all, texts, WAIT};
use e2e::{Broker, Gateway, GatewayConfig};

enum Carrier {
    Embedded,
    Standalone,
}

struct Setup {
    gateways: Vec<Gateway>,
    broker: Option<Broker>,
}

async fn setup(carrier: Carrier, gateways: usize, history: &str) -> Result<Setup> {
    let broker = match carrier {
        Carrier::Embedded => None,
        Carrier::Standalone => Some(Broker::start("broker").await?),
    };
    let mut started = Vec::new();
    for i in 0..gateways {
        let config = match &broker {
            Some(broker) => GatewayConfig::with_broker(&format!("gw{i}"), broker.addr),
            None if i == 0 => GatewayConfig::embedded("gw0"),
            None => GatewayConfig::with_broker(
                &format!("gw{i}"),
                started
                    .first()
                    .and_then(|g: &Gateway| g.embedded_broker)
                    .context("the first gateway's embedded broker")?,
            ),
        };
        started.push(
            Gateway::start(
                config
                    .workers(2)
                    .arg("--max-messages-per-second=0")
                    .arg("--history")
                    .arg(history),
            )
            .await?,
        );
    }
    Ok(Setup {
        gateways: started,
        broker,
    })
}

macro_rules! on_both_brokers {
    ($($name:ident),* $(,)?) => {
        mod embedded {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() -> anyhow::Result<()> {
                    super::$name(super::Carrier::Embedded).await
                }
            )*
        }
        mod standalone {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() -> anyhow::Result<()> {
                    super::$name(super::Carrier::Standalone).await
                }
            )*
        }
    };
}

on_both_brokers!(
    a_member_recovers_exactly_what_it_missed,
    an_offset_older_than_history_recovers_what_is_left,
    raw_members_see_no_change,
);

async fn a_member_recovers_exactly_what_it_missed(carrier: Carrier) -> Result<()> {
    let setup = setup(carrier, 2, "chat:=1000,10m").await?;
    e2e::history::a_member_recovers_exactly_what_it_missed(&setup.gateways[0], &setup.gateways[1])
        .await
}

async fn an_offset_older_than_history_recovers_what_is_left(carrier: Carrier) -> Result<()> {
    let setup = setup(carrier, 1, "h:=20,10m").await?;
    e2e::history::an_offset_older_than_history_recovers_what_is_left(&setup.gateways[0]).await
}

async fn raw_members_see_no_change(carrier: Carrier) -> Result<()> {
    let setup = setup(carrier, 2, "chat:=100,10m").await?;
    e2e::history::raw_members_see_no_change(&setup.gateways[0], &setup.gateways[1]).await
}

/// The store restarted empty (the standalone broker): a recover answers `recovered:false` with
/// the new epoch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_epoch_change_answers_recovered_false() -> Result<()> {
    let mut setup = setup(Carrier::Standalone, 1, "chat:=100,10m").await?;
    let mut sender = setup.gateways[0].connect("sender").await?;
    let mut member = setup.gateways[0].connect("member").await?;
    let joined = join_positioned(&mut member, "chat:1", None).await?;
    let (_, epoch) = joined.position();
    send_all(&mut sender, "chat:1", texts(0, 3)).await?;
    next_positioned(&mut member, "chat:1", 3).await?;
    drop(member);

    let mut broker = setup.broker.take().context("standalone broker")?;
    let addr = broker.addr;
    broker.process.kill(WAIT).await?;
    let _broker = Broker::start_on("broker (restarted)", addr).await?;
    setup.gateways[0]
        .process
        .wait_for_nth_log("bus up", 2, WAIT)
        .await?;
    let mut member = setup.gateways[0].connect("member again").await?;
    let recovered = join_positioned(&mut member, "chat:1", Some((3, &epoch))).await?;
    ensure!(recovered.reply["recovered"] == false, "{}", recovered.reply);
    let (top, new_epoch) = recovered.position();
    ensure!(top == 0 && new_epoch != epoch, "{}", recovered.reply);
    ensure!(recovered.messages.is_empty());
    Ok(())
}
