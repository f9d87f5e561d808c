//! The test verifier `txnlog::read_committed` against Apache Kafka: committed, aborted,
//! fenced-zombie, still-open and non-transactional records on one topic; the verifier must return
//! exactly the committed and non-transactional ones, and librdkafka's own `read_committed`
//! consumer (the broker filters aborted transactions) must return the same. Two independent
//! readers agreeing is what the crash tests rely on.

use std::time::Duration;

use pluginflow_tests::broker::{Broker, Isolation, consume_all, produce};
use pluginflow_tests::txnlog;
use rdkafka::ClientConfig;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};

const TOPIC: &str = "txn-log";
const TIMEOUT: Duration = Duration::from_secs(30);

/// A transactional producer with `id`, registered (which fences an earlier one with `id`).
fn transactional(bootstrap: &str, id: &str) -> ThreadedProducer<DefaultProducerContext> {
    let p: ThreadedProducer<DefaultProducerContext> =
        ClientConfig::new().set("bootstrap.servers", bootstrap).set("transactional.id", id).create().expect("transactional producer");
    p.init_transactions(TIMEOUT).expect("init_transactions");
    p
}

/// Sends `value` to each of `partitions` and waits until the broker has them (the transaction
/// stays as it is).
fn send(p: &ThreadedProducer<DefaultProducerContext>, value: &str, partitions: &[i32]) {
    for &partition in partitions {
        p.send(BaseRecord::<(), str>::to(TOPIC).payload(value).partition(partition)).map_err(|(e, _)| e).expect("send");
    }
    p.flush(TIMEOUT).expect("flush");
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

#[test]
fn verifier_applies_read_committed_from_the_log_markers() {
    let broker = Broker::start();
    let bs = broker.bootstrap();
    broker.create_topic(TOPIC, 2);

    produce(&bs, TOPIC, 2, &[b"plain-1".to_vec(), b"plain-2".to_vec()]);

    let a = transactional(&bs, "txn-a");
    a.begin_transaction().unwrap();
    send(&a, "committed-1", &[0, 1]);
    a.commit_transaction(TIMEOUT).unwrap();

    a.begin_transaction().unwrap();
    send(&a, "aborted-1", &[0, 1]);
    a.abort_transaction(TIMEOUT).unwrap();

    // A transaction whose records interleave with a non-transactional one: both visible, the
    // plain one without waiting for the commit.
    a.begin_transaction().unwrap();
    send(&a, "committed-2", &[0]);
    produce(&bs, TOPIC, 1, &[b"plain-3".to_vec()]);
    a.commit_transaction(TIMEOUT).unwrap();

    // A zombie: its transaction is open when a new producer with the same transactional id
    // registers, which must abort it; the new one then commits its own.
    let zombie = transactional(&bs, "txn-z");
    zombie.begin_transaction().unwrap();
    send(&zombie, "zombie-1", &[0, 1]);
    let successor = transactional(&bs, "txn-z");
    successor.begin_transaction().unwrap();
    send(&successor, "committed-3", &[1]);
    successor.commit_transaction(TIMEOUT).unwrap();

    assert!(!txnlog::transaction_in_flight(&bs, TOPIC, 2), "every transaction so far has ended");

    // Open until the end of the test: nobody commits, aborts or fences it.
    let open = transactional(&bs, "txn-open");
    open.begin_transaction().unwrap();
    send(&open, "open-1", &[1]);

    assert!(txnlog::transaction_in_flight(&bs, TOPIC, 2), "open-1 is in flight");
    let log = txnlog::read_committed(&bs, TOPIC);
    let got = sorted(log.visible.iter().map(|r| r.value_text()).collect());
    println!(
        "verifier: {} visible {got:?}, {} aborted, {} open, {} markers, {} aborted transactions listed by the broker",
        log.visible.len(),
        log.aborted,
        log.open,
        log.markers,
        log.broker_aborted_txns
    );
    let want =
        sorted(["plain-1", "plain-2", "plain-3", "committed-1", "committed-1", "committed-2", "committed-3"].map(String::from).to_vec());
    assert_eq!(got, want, "visible records");
    assert_eq!(log.aborted, 4, "aborted-1 twice, zombie-1 twice");
    assert_eq!(log.open, 1, "open-1");
    assert_eq!(log.past_open, 0, "open-1 is the last record of partition 1");
    // One marker per partition a transaction wrote to: partition 0 has commit, abort, commit,
    // fencing abort; partition 1 commit, abort, fencing abort, the successor's commit.
    assert_eq!(log.markers, 8, "markers");
    for r in &log.visible {
        assert!(log.visible.iter().filter(|o| o.partition == r.partition && o.offset == r.offset).count() == 1, "offsets are unique");
    }

    // librdkafka's read_committed consumer: the broker lists the aborted transactions in its
    // read_committed Fetch responses and holds back the open one (last stable offset).
    let rc = sorted(consume_all(&bs, TOPIC, Isolation::ReadCommitted).into_iter().map(|r| r.value).collect());
    println!("librdkafka read_committed: {} records {rc:?}", rc.len());
    assert_eq!(rc, got, "librdkafka's read_committed and the verifier disagree");
    drop(open);
}
