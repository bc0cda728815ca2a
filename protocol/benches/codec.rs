//! Micro-benchmarks of the per-message codec work: `cargo bench -p protocol`.

use std::hint::black_box;

use bytes::BytesMut;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use protocol::client::{parse_command, ParseLimits};
use protocol::codec::{decode_frame, encode_message, encode_publish};

const MAX: usize = protocol::DEFAULT_MAX_FRAME_SIZE;

fn payload64() -> String {
    "x".repeat(64)
}

fn link_codec(c: &mut Criterion) {
    let payload = payload64();
    let mut group = c.benchmark_group("link");
    group.throughput(Throughput::Elements(1));
    group.bench_function("encode_publish_64B", |b| {
        b.iter(|| encode_publish(black_box(b"123"), black_box(payload.as_bytes()), true, MAX))
    });
    group.bench_function("encode_message_64B", |b| {
        b.iter(|| encode_message(black_box(b"123"), black_box(payload.as_bytes()), MAX))
    });
    let frame = encode_message(b"123", payload.as_bytes(), MAX).expect("encodes");
    group.bench_function("decode_message_64B", |b| {
        b.iter_batched_ref(
            || BytesMut::from(&frame[..]),
            |buf| decode_frame(buf, MAX),
            criterion::BatchSize::SmallInput,
        )
    });
    let mut stream = BytesMut::new();
    for _ in 0..100 {
        stream.extend_from_slice(&frame);
    }
    group.throughput(Throughput::Elements(100));
    group.bench_function("decode_100_messages_from_one_buffer", |b| {
        b.iter_batched_ref(
            || stream.clone(),
            |buf| {
                let mut n = 0;
                while let Ok(Some(frame)) = decode_frame(buf, MAX) {
                    black_box(frame);
                    n += 1;
                }
                n
            },
            criterion::BatchSize::SmallInput,
        )
    });
    group.finish();
}

fn client_commands(c: &mut Criterion) {
    let limits = ParseLimits::default();
    let send = format!(
        r#"{{"cmd":"send_to_group","group_id":"123","message":"{}"}}"#,
        payload64()
    );
    let escaped = r#"{"cmd":"send_to_group","group_id":123,"message":"line\nbreak \"quoted\" text of some length"}"#;
    let object =
        r#"{"cmd":"send_to_group","group_id":"123","message":{"price": 42, "tags": ["a", "b"]}}"#;
    let join = r#"{"cmd":"add_group","group_id":"123","req_id":17}"#;
    let mut group = c.benchmark_group("client");
    group.throughput(Throughput::Elements(1));
    group.bench_function("parse_send_64B", |b| {
        b.iter(|| parse_command(black_box(&send), &limits))
    });
    group.bench_function("parse_send_escaped", |b| {
        b.iter(|| parse_command(black_box(escaped), &limits))
    });
    group.bench_function("parse_send_object", |b| {
        b.iter(|| parse_command(black_box(object), &limits))
    });
    group.bench_function("parse_join", |b| {
        b.iter(|| parse_command(black_box(join), &limits))
    });
    group.finish();
}

criterion_group!(benches, link_codec, client_commands);
criterion_main!(benches);
