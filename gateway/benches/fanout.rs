//! Micro-benchmarks of the fan-out path: `cargo bench -p gateway`.
//!
//! - `outbox/push_100_members`: what a worker does per delivery for a group of 100 local
//!   members (a shared payload pushed into each member's bounded queue), plus the writers
//!   taking the batch.
//! - `router/dispatch_2_workers`: a send handed to the inboxes of the 2 workers that have
//!   members of the group.

use std::hint::black_box;
use std::sync::Arc;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use gateway::fanout::frame::Frames;
use gateway::fanout::hub::Router;
use gateway::fanout::outbox::Outbox;
use protocol::{GroupId, Text};

fn outbox(c: &mut Criterion) {
    let payload = Bytes::from("x".repeat(64));
    let members: Vec<Outbox> = (0..100).map(|_| Outbox::new(1024, 1 << 20)).collect();
    let mut batch = Frames::default();
    let mut group = c.benchmark_group("outbox");
    group.throughput(Throughput::Elements(100));
    group.bench_function("push_100_members", |b| {
        b.iter(|| {
            for member in &members {
                black_box(member.push(payload.clone()));
            }
            for member in &members {
                member.take_all(&mut batch);
                batch.clear_all_but_begun();
            }
        })
    });
    group.finish();
}

fn router(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let (tx0, mut rx0) = tokio::sync::mpsc::channel(1 << 16);
    let (tx1, mut rx1) = tokio::sync::mpsc::channel(1 << 16);
    let router = Arc::new(Router::new(vec![tx0, tx1]));
    let group_id = GroupId::new("123", 256).expect("valid group");
    router.worker_joined(0, &group_id).expect("no group limit");
    router.worker_joined(1, &group_id).expect("no group limit");
    let payload = Text::from("x".repeat(64));
    let mut sink = Vec::with_capacity(64);
    let mut group = c.benchmark_group("router");
    group.throughput(Throughput::Elements(1));
    group.bench_function("dispatch_2_workers", |b| {
        b.iter(|| {
            let reached = runtime.block_on(router.dispatch("123", &payload));
            // Keep the inboxes from filling: what the workers would take.
            if rx0.len() >= 64 {
                sink.clear();
                let _ = rx0.blocking_recv_many(&mut sink, 64);
                sink.clear();
                let _ = rx1.blocking_recv_many(&mut sink, 64);
            }
            black_box(reached)
        })
    });
    group.finish();
}

criterion_group!(benches, outbox, router);
criterion_main!(benches);
