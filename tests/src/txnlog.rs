//! An independent `read_committed` reader for tests: reads a topic's raw log over the Kafka
//! protocol and decides itself which records a `read_committed` consumer may see.
//!
//! Why: librdkafka's `read_committed` consumer trusts the broker's list of aborted transactions
//! in each Fetch response; a broker (or mock) that lists none, or lists them wrongly, makes
//! aborted records look committed. The crash tests count exactly-once output with both readers
//! and require them to agree. This module fetches everything (`read_uncommitted`) and applies
//! Kafka's rule itself, from the COMMIT/ABORT markers in the log:
//!
//! - a record of a non-transactional batch is visible at once;
//! - a record of a transactional batch of producer id P waits for P's next control record on
//!   the same partition: COMMIT makes it visible, ABORT discards it;
//! - records still waiting at the end belong to an open transaction and are not visible. (Real
//!   Kafka also holds back every later record of the partition until that transaction ends;
//!   they are counted here as [`TxnLog::past_open`].)
//!
//! The client is deliberately tiny: one connection to a single broker, Fetch v4 only (request
//! header v1, `RecordBatch` v2 records), no compression. Every batch's CRC-32C is checked, so a
//! parsing mistake fails loudly instead of miscounting.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};

/// One record a `read_committed` consumer would see.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogRecord {
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
    /// Key bytes (`None` for a null key).
    pub key: Option<Vec<u8>>,
    /// Value bytes (`None` for a null value).
    pub value: Option<Vec<u8>>,
}

impl LogRecord {
    /// The value as text (lossy; empty for a null value).
    pub fn value_text(&self) -> String {
        String::from_utf8_lossy(self.value.as_deref().unwrap_or_default()).into_owned()
    }
}

/// A topic read with the `read_committed` rule applied from the log's markers.
#[derive(Debug, Default)]
pub struct TxnLog {
    /// Visible records, by partition, then offset.
    pub visible: Vec<LogRecord>,
    /// Records of aborted transactions.
    pub aborted: usize,
    /// Records of transactions without a marker yet (open, or left by a zombie nobody fenced).
    pub open: usize,
    /// Visible records at offsets after the first open transaction's first record: real Kafka
    /// would hold these back (last stable offset) until that transaction ends.
    pub past_open: usize,
    /// COMMIT and ABORT markers seen.
    pub markers: usize,
    /// Aborted transactions the broker listed in its Fetch responses (Kafka lists them only to
    /// `read_committed` fetches, so this reader normally sees none).
    pub broker_aborted_txns: usize,
}

/// Reads every partition of `topic` on the single broker at `bootstrap` (`host:port`) up to
/// its high watermark and applies `read_committed` (see the module doc).
pub fn read_committed(bootstrap: &str, topic: &str) -> TxnLog {
    let partitions = partition_count(bootstrap, topic);
    let mut conn = Connection::open(bootstrap);
    let mut log = TxnLog::default();
    for partition in 0..partitions {
        read_partition(&mut conn, topic, partition, &mut log);
    }
    log
}

/// Whether some partition of `topic` (with `partitions` partitions) holds records of a
/// transaction that has not ended: its last stable offset is below its high watermark. Cheap (two
/// ListOffsets per partition); a test uses it to time a crash inside a transaction. Relies on the
/// broker's last stable offset.
pub fn transaction_in_flight(bootstrap: &str, topic: &str, partitions: i32) -> bool {
    let mut conn = Connection::open(bootstrap);
    (0..partitions).any(|p| conn.latest_offset(topic, p, true) < conn.latest_offset(topic, p, false))
}

/// The partition count of `topic`, from rdkafka's metadata: fetching a partition that does not
/// exist is an error, so the reader has to know.
pub fn partition_count(bootstrap: &str, topic: &str) -> i32 {
    let consumer: BaseConsumer = ClientConfig::new().set("bootstrap.servers", bootstrap).create().expect("metadata client");
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10)).expect("metadata");
    let t = &metadata.topics()[0];
    assert!(t.error().is_none(), "metadata of {topic}: {:?}", t.error());
    let n = t.partitions().len() as i32;
    assert!(n > 0, "topic {topic} has no partitions");
    n
}

/// Fetches `partition` from offset 0 to its high watermark, applying the rule as it goes.
fn read_partition(conn: &mut Connection, topic: &str, partition: i32, log: &mut TxnLog) {
    // Transactional records waiting for their producer's marker, by producer id.
    let mut waiting: HashMap<i64, Vec<LogRecord>> = HashMap::new();
    let mut visible: Vec<LogRecord> = Vec::new();
    let mut offset = 0i64;
    let mut max_bytes = 1 << 20;
    let mut empty_fetches = 0;
    loop {
        let fetched = conn.fetch(topic, partition, offset, max_bytes);
        log.broker_aborted_txns += fetched.aborted_txns;
        if offset >= fetched.high_watermark {
            break;
        }
        let requested = offset;
        let mut input = Input::new(&fetched.records);
        while let Some(batch) = next_batch(&mut input) {
            let batch = parse_batch(batch, partition);
            offset = offset.max(batch.next_offset);
            // A broker may answer with the whole batch holding the offset asked for; what lies
            // below it was handled by the previous fetch.
            let records = batch.records.into_iter().filter(|r| r.offset >= requested);
            if batch.control {
                for r in records {
                    log.markers += 1;
                    let held = waiting.remove(&batch.producer_id).unwrap_or_default();
                    match control_type(&r) {
                        ControlType::Commit => visible.extend(held),
                        ControlType::Abort => log.aborted += held.len(),
                    }
                }
            } else if batch.transactional {
                waiting.entry(batch.producer_id).or_default().extend(records);
            } else {
                visible.extend(records);
            }
        }
        if offset == requested {
            // Nothing whole came back: either the next batch is larger than we asked for, or
            // the broker has nothing yet below the high watermark it just reported.
            if !fetched.records.is_empty() {
                assert!(max_bytes < 1 << 28, "a batch at {topic}/{partition}@{offset} exceeds 256 MiB");
                max_bytes *= 2;
            } else {
                empty_fetches += 1;
                assert!(empty_fetches < 50, "{topic}/{partition}: no records at {offset} below high watermark {}", fetched.high_watermark);
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
    let first_open = waiting.values().filter_map(|held| held.first()).map(|r| r.offset).min();
    log.open += waiting.values().map(Vec::len).sum::<usize>();
    visible.sort_by_key(|r| r.offset);
    log.past_open += first_open.map_or(0, |o| visible.iter().filter(|r| r.offset > o).count());
    log.visible.extend(visible);
}

/// One Fetch response partition.
struct Fetched {
    high_watermark: i64,
    aborted_txns: usize,
    records: Vec<u8>,
}

/// A blocking connection speaking just enough of the protocol.
struct Connection {
    stream: TcpStream,
    correlation: i32,
}

impl Connection {
    fn open(bootstrap: &str) -> Self {
        let stream = TcpStream::connect(bootstrap).unwrap_or_else(|e| panic!("cannot connect to {bootstrap}: {e}"));
        stream.set_read_timeout(Some(Duration::from_secs(30))).expect("read timeout");
        Self { stream, correlation: 0 }
    }

    /// Sends one request (header v1) and returns the response body after the correlation id.
    fn request(&mut self, api_key: i16, api_version: i16, body: &[u8]) -> Vec<u8> {
        self.correlation += 1;
        let mut req = Vec::new();
        req.extend(api_key.to_be_bytes());
        req.extend(api_version.to_be_bytes());
        req.extend(self.correlation.to_be_bytes());
        put_string(&mut req, "pluginflow-txnlog");
        req.extend(body);
        let mut framed = (req.len() as i32).to_be_bytes().to_vec();
        framed.extend(req);
        self.stream.write_all(&framed).expect("send a request");
        let mut size = [0u8; 4];
        self.stream.read_exact(&mut size).expect("response size");
        let mut response = vec![0u8; i32::from_be_bytes(size) as usize];
        self.stream.read_exact(&mut response).expect("response");
        assert_eq!(i32::from_be_bytes(response[..4].try_into().expect("4 bytes")), self.correlation, "correlation id");
        response.split_off(4)
    }

    /// Fetch v4, `read_uncommitted`, one partition from `offset`.
    fn fetch(&mut self, topic: &str, partition: i32, offset: i64, max_bytes: i32) -> Fetched {
        let mut req = Vec::new();
        req.extend((-1i32).to_be_bytes()); // replica_id: a consumer
        req.extend(100i32.to_be_bytes()); // max_wait_ms
        req.extend(0i32.to_be_bytes()); // min_bytes: answer at once
        req.extend(max_bytes.to_be_bytes());
        req.push(0); // isolation_level: read_uncommitted, markers and all
        put_one_partition(&mut req, topic, partition);
        req.extend(offset.to_be_bytes());
        req.extend(max_bytes.to_be_bytes());
        let body = self.request(1, 4, &req);

        let mut r = Input::new(&body);
        let error = r.one_partition(topic, partition);
        assert_eq!(error, 0, "Fetch {topic}/{partition}@{offset}: error code {error}");
        let high_watermark = r.i64();
        r.i64(); // last_stable_offset
        let aborted_txns = match r.i32() {
            -1 => 0,
            n => {
                r.take(n as usize * 16); // producer_id i64, first_offset i64
                n as usize
            }
        };
        let records = match r.i32() {
            -1 => Vec::new(),
            n => r.take(n as usize).to_vec(),
        };
        Fetched { high_watermark, aborted_txns, records }
    }

    /// ListOffsets v2, latest offset of one partition: the high watermark when `read_committed`
    /// is false, the last stable offset when it is true.
    fn latest_offset(&mut self, topic: &str, partition: i32, read_committed: bool) -> i64 {
        let mut req = Vec::new();
        req.extend((-1i32).to_be_bytes()); // replica_id: a consumer
        req.push(u8::from(read_committed)); // isolation_level
        put_one_partition(&mut req, topic, partition);
        req.extend((-1i64).to_be_bytes()); // timestamp: latest
        let body = self.request(2, 2, &req);

        let mut r = Input::new(&body);
        let error = r.one_partition(topic, partition);
        assert_eq!(error, 0, "ListOffsets {topic}/{partition}: error code {error}");
        r.i64(); // timestamp
        r.i64()
    }
}

/// The topics array of a request naming one partition of one topic.
fn put_one_partition(req: &mut Vec<u8>, topic: &str, partition: i32) {
    req.extend(1i32.to_be_bytes()); // one topic
    put_string(req, topic);
    req.extend(1i32.to_be_bytes()); // one partition
    req.extend(partition.to_be_bytes());
}

fn put_string(buf: &mut Vec<u8>, s: &str) {
    buf.extend((s.len() as i16).to_be_bytes());
    buf.extend(s.as_bytes());
}

/// One parsed `RecordBatch`.
struct Batch {
    /// The offset after the batch's last one (offsets of removed records count too).
    next_offset: i64,
    transactional: bool,
    control: bool,
    producer_id: i64,
    records: Vec<LogRecord>,
}

/// The next whole batch of a Fetch response's record set, or `None` at its end or at a batch
/// cut short by the size limit (the caller fetches again from there).
fn next_batch<'a>(input: &mut Input<'a>) -> Option<&'a [u8]> {
    // baseOffset (8) + batchLength (4), then batchLength bytes.
    if input.remaining() < 12 {
        return None;
    }
    let length = i32::from_be_bytes(input.peek(12)[8..12].try_into().expect("4 bytes"));
    assert!(length >= 49, "batch length {length} is too short for RecordBatch v2");
    if input.remaining() < 12 + length as usize {
        return None;
    }
    Some(input.take(12 + length as usize))
}

fn parse_batch(bytes: &[u8], partition: i32) -> Batch {
    let mut b = Input::new(bytes);
    let base_offset = b.i64();
    b.i32(); // batchLength
    b.i32(); // partitionLeaderEpoch
    let magic = b.i8();
    assert_eq!(magic, 2, "record batch at {base_offset}: magic {magic}, only v2 is read");
    let crc = b.i32() as u32;
    assert_eq!(crc, crc32c(b.rest()), "CRC-32C mismatch in the batch at {partition}@{base_offset}");
    let attributes = b.i16();
    assert_eq!(attributes & 0x7, 0, "batch at {partition}@{base_offset} is compressed; this reader only reads uncompressed batches");
    let last_offset_delta = b.i32();
    b.i64(); // baseTimestamp
    b.i64(); // maxTimestamp
    let producer_id = b.i64();
    b.i16(); // producerEpoch
    b.i32(); // baseSequence
    let count = b.i32();
    let records = (0..count)
        .map(|_| {
            let length = b.varint();
            let mut r = Input::new(b.take(length as usize));
            r.i8(); // attributes
            r.varint(); // timestampDelta
            let offset_delta = r.varint();
            let key = r.nullable_varbytes();
            let value = r.nullable_varbytes();
            // Headers follow; nothing here needs them.
            LogRecord { partition, offset: base_offset + offset_delta, key, value }
        })
        .collect();
    assert_eq!(b.remaining(), 0, "trailing bytes in the batch at {partition}@{base_offset}");
    Batch {
        next_offset: base_offset + last_offset_delta as i64 + 1,
        transactional: attributes & 0x10 != 0,
        control: attributes & 0x20 != 0,
        producer_id,
        records,
    }
}

enum ControlType {
    Abort,
    Commit,
}

/// A control record's key: version i16, type i16 (0 = ABORT, 1 = COMMIT).
fn control_type(r: &LogRecord) -> ControlType {
    let key = r.key.as_deref().unwrap_or_else(|| panic!("control record at {}@{} without a key", r.partition, r.offset));
    assert!(key.len() >= 4, "control record key at {}@{} is {} bytes", r.partition, r.offset, key.len());
    match i16::from_be_bytes([key[2], key[3]]) {
        0 => ControlType::Abort,
        1 => ControlType::Commit,
        t => panic!("control record at {}@{} of unknown type {t}", r.partition, r.offset),
    }
}

/// A cursor over bytes; running past the end panics with the reader's position.
struct Input<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Input<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Self { bytes, at: 0 }
    }

    fn remaining(&self) -> usize {
        self.bytes.len() - self.at
    }

    fn rest(&self) -> &'a [u8] {
        &self.bytes[self.at..]
    }

    fn peek(&self, n: usize) -> &'a [u8] {
        assert!(n <= self.remaining(), "truncated input: {n} bytes wanted at {}, {} left", self.at, self.remaining());
        &self.bytes[self.at..self.at + n]
    }

    fn take(&mut self, n: usize) -> &'a [u8] {
        let out = self.peek(n);
        self.at += n;
        out
    }

    fn i8(&mut self) -> i8 {
        self.take(1)[0] as i8
    }

    fn i16(&mut self) -> i16 {
        i16::from_be_bytes(self.take(2).try_into().expect("2 bytes"))
    }

    fn i32(&mut self) -> i32 {
        i32::from_be_bytes(self.take(4).try_into().expect("4 bytes"))
    }

    fn i64(&mut self) -> i64 {
        i64::from_be_bytes(self.take(8).try_into().expect("8 bytes"))
    }

    fn string(&mut self) -> String {
        let n = self.i16();
        String::from_utf8_lossy(self.take(n as usize)).into_owned()
    }

    /// The start of a response about one partition of one topic, checked against the request;
    /// returns the partition's error code.
    fn one_partition(&mut self, topic: &str, partition: i32) -> i16 {
        self.i32(); // throttle_time_ms
        assert_eq!(self.i32(), 1, "one topic in the response");
        assert_eq!(self.string(), topic);
        assert_eq!(self.i32(), 1, "one partition in the response");
        assert_eq!(self.i32(), partition);
        self.i16()
    }

    /// A zigzag varint (the record format's lengths and deltas).
    fn varint(&mut self) -> i64 {
        let mut raw = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = self.take(1)[0];
            raw |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return (raw >> 1) as i64 ^ -((raw & 1) as i64);
            }
        }
        panic!("varint longer than 10 bytes");
    }

    /// Varint length (-1 = null), then that many bytes.
    fn nullable_varbytes(&mut self) -> Option<Vec<u8>> {
        match self.varint() {
            -1 => None,
            n => Some(self.take(n as usize).to_vec()),
        }
    }
}

/// CRC-32C (Castagnoli), as `RecordBatch` v2 uses, bit by bit: test data is small.
fn crc32c(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = (crc >> 1) ^ (0x82F6_3B78 & (crc & 1).wrapping_neg());
        }
    }
    !crc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_matches_the_standard_check_value() {
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
    }

    #[test]
    fn zigzag_varints_decode() {
        // Zigzag: 0 → 0, 1 → -1, 2 → 1; 0xac 0x02 is 300, i.e. 150.
        let mut i = Input::new(&[0x00, 0x01, 0x02, 0xac, 0x02]);
        assert_eq!([i.varint(), i.varint(), i.varint(), i.varint()], [0, -1, 1, 150]);
        assert_eq!(i.remaining(), 0);
    }
}
