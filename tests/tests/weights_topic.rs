//! Network weights through a real compacted topic (the format of `protocol::weights`, the
//! client of `common::weights`): a version of a few megabytes, split into chunks under every
//! default size limit, reaches a follower that starts after it was written; a corrupted and a
//! truncated version are refused and counted while the follower keeps the version it had; a
//! sound version after them is taken; another model's records and another network's weights
//! are not. Needs the stack (`make stack-up`).

use std::time::Duration;

use common::weights::{publish, Follower};
use protocol::weights::{split, Chunk, DEFAULT_CHUNK_BYTES};
use rdkafka::{
    admin::{AdminClient, AdminOptions},
    client::DefaultClientContext,
    producer::FutureProducer,
};
use streamrec_tests::kafka_config;

const MODEL: &str = "test-dqn";
const SHAPE: &str = "tower-64/186192";

/// `n` bytes that no two versions share (an xorshift stream from `seed`).
fn blob(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn chunks(model: &str, version: u64, shape: &str, blob: &[u8]) -> Vec<Chunk> {
    split(model, version, shape, blob, DEFAULT_CHUNK_BYTES).unwrap_or_else(|e| panic!("{e}"))
}

/// A new follower of `topic` read to the topic's end: the newest verified version's number and
/// blob, and the rejections it counted.
async fn late_follower(topic: &str, shape: &str) -> (Option<(u64, Vec<u8>)>, u64) {
    let (topic, shape) = (topic.to_string(), shape.to_string());
    tokio::task::spawn_blocking(move || {
        // Metadata of a new topic reaches the brokers one after the other: retry the start.
        let mut follower = streamrec_tests::wait_for("the weights topic's metadata", Duration::from_secs(30), || {
            Follower::new(kafka_config(), &topic, MODEL, Some(&shape)).ok()
        });
        let newest = follower.catch_up(Duration::from_secs(60)).unwrap_or_else(|e| panic!("{e:#}"));
        (newest.map(|c| (c.meta.version, c.blob)), follower.rejected())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn versions_arrive_whole_and_verified_and_bad_ones_are_refused() {
    let topic = streamrec_tests::create_weights_topic().await.unwrap_or_else(|e| panic!("{e}"));
    let producer: FutureProducer =
        kafka_config().set("acks", "all").set("enable.idempotence", "true").create().unwrap_or_else(|e| panic!("{e}"));

    // Version 1: 3 MB, six chunks of at most 512 KiB; a follower started afterwards reads it.
    let v1 = blob(3_000_000, 1);
    let c1 = chunks(MODEL, 1, SHAPE, &v1);
    assert_eq!(c1.len(), 6);
    publish(&producer, &topic, &c1).await.unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(late_follower(&topic, SHAPE).await, (Some((1, v1.clone())), 0));

    // Version 2 with one flipped byte, version 3 with a chunk cut short: both refused.
    let mut c2 = chunks(MODEL, 2, SHAPE, &blob(3_000_000, 2));
    c2[3].bytes[1_000] ^= 0x01;
    let mut c3 = chunks(MODEL, 3, SHAPE, &blob(3_000_000, 3));
    c3[5].bytes.truncate(100);
    // Another model's version in the same topic is none of this follower's business.
    let other = chunks("other-model", 9, SHAPE, &blob(10_000, 9));
    for c in [&c2, &c3, &other] {
        publish(&producer, &topic, c).await.unwrap_or_else(|e| panic!("{e:#}"));
    }
    let (newest, rejected) = late_follower(&topic, SHAPE).await;
    assert_eq!(newest.map(|(v, _)| v), Some(1), "the corrupted and the truncated version are not served");
    assert_eq!(rejected, 2, "one rejection each");

    // A sound version 4 is taken: by a follower that was there all along, and by a late one.
    let (t, (caught_up_tx, caught_up)) = (topic.clone(), tokio::sync::oneshot::channel());
    let follower = tokio::task::spawn_blocking(move || {
        let mut f = Follower::new(kafka_config(), &t, MODEL, Some(SHAPE)).unwrap_or_else(|e| panic!("{e:#}"));
        let before = f.catch_up(Duration::from_secs(60)).unwrap_or_else(|e| panic!("{e:#}"));
        assert_eq!(before.map(|c| c.meta.version), Some(1));
        let _ = caught_up_tx.send(());
        // Wait for the next version, which the test publishes once this one has caught up.
        let next = f.next(Duration::from_secs(60)).unwrap_or_else(|e| panic!("{e:#}"));
        (next.map(|c| (c.meta.version, c.blob)), f.served(), f.rejected())
    });
    caught_up.await.unwrap_or_else(|e| panic!("the follower did not catch up: {e}"));
    let v4 = blob(2_000_000, 4);
    publish(&producer, &topic, &chunks(MODEL, 4, SHAPE, &v4)).await.unwrap_or_else(|e| panic!("{e:#}"));
    let (next, served, rejected) = follower.await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!((next, served, rejected), (Some((4, v4.clone())), Some(4), 2));
    assert_eq!(late_follower(&topic, SHAPE).await, (Some((4, v4)), 2));

    // A replica of another network refuses every version (each counted) and serves none.
    let (newest, rejected) = late_follower(&topic, "mlp-64/1491").await;
    assert_eq!((newest, rejected), (None, 4), "versions 1 to 4, each refused once");

    if let Ok(admin) = kafka_config().create::<AdminClient<DefaultClientContext>>() {
        let _ = admin.delete_topics(&[&topic], &AdminOptions::new()).await;
    }
}
