//! Where an ingest job is in each Kafka partition, per tier.
//!
//! - Online: the partition's next offset, stored in RocksDB under a cursor key
//!   (`c` job `\0` topic `\0` partition) in the same write batch as the online
//!   state the messages before it produced. A crash loses both or neither. The
//!   key also holds the offline floor: the first offset still only buffered
//!   for an offline file at that moment.
//! - Offline: the files themselves. Each is named by its partition and the offset
//!   range it covers, `ingest-JOB-pPPPPP-FIRST-LAST.parquet`, so the offline
//!   tier's next offset is one past the highest `LAST` (or the stored floor, if
//!   higher: a range of dead letters only writes no file), and a replay of a
//!   range rewrites the same name instead of adding a copy.

use crate::online::encoding::CURSOR_PREFIX;

/// The RocksDB key of a job's online cursor in one partition.
pub(crate) fn key(job: &str, topic: &str, partition: i32) -> Vec<u8> {
    let mut k = job_prefix(job, topic);
    k.extend_from_slice(&partition.to_be_bytes());
    k
}

/// The prefix of every cursor key of a job's topic.
pub(crate) fn job_prefix(job: &str, topic: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(3 + job.len() + topic.len() + 4);
    k.push(CURSOR_PREFIX);
    k.extend_from_slice(job.as_bytes());
    k.push(0);
    k.extend_from_slice(topic.as_bytes());
    k.push(0);
    k
}

/// The partition of a cursor key under `prefix`, if it is one.
pub(crate) fn partition_of(prefix: &[u8], key: &[u8]) -> Option<i32> {
    let rest = key.strip_prefix(prefix)?;
    Some(i32::from_be_bytes(rest.try_into().ok()?))
}

/// What a cursor key holds for one partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Stored {
    /// The next offset to consume: every message before it is in the online
    /// state (when the job writes online) or was dead-lettered.
    pub next: i64,
    /// The first offset the offline tier may still lack: the first of the rows
    /// buffered for an offline file when the cursor was written (else `next`).
    /// Files written since then move the offline tier further (see `Job`).
    pub offline_floor: i64,
}

/// A stored cursor's bytes: `next` and `offline_floor`, big-endian.
pub(crate) fn encode(c: Stored) -> Vec<u8> {
    let mut v = Vec::with_capacity(16);
    v.extend_from_slice(&c.next.to_be_bytes());
    v.extend_from_slice(&c.offline_floor.to_be_bytes());
    v
}

/// A stored cursor, if `value` is one.
pub(crate) fn decode(value: &[u8]) -> Option<Stored> {
    let (next, floor) = value.split_at_checked(8)?;
    Some(Stored {
        next: i64::from_be_bytes(next.try_into().ok()?),
        offline_floor: i64::from_be_bytes(floor.try_into().ok()?),
    })
}

/// The prefix of a job's offline file names.
pub(crate) fn file_prefix(job: &str) -> String {
    format!("ingest-{job}-p")
}

/// The offline file holding a partition's rows from offset `first` to `last`.
pub(crate) fn file_name(job: &str, partition: i32, first: i64, last: i64) -> String {
    format!("ingest-{job}-p{partition:05}-{first:020}-{last:020}.parquet")
}

/// `(partition, first, last)` of one of a job's file names.
pub(crate) fn parse_file_name(job: &str, name: &str) -> Option<(i32, i64, i64)> {
    let rest = name
        .strip_prefix(&file_prefix(job))?
        .strip_suffix(".parquet")?;
    let mut parts = rest.split('-');
    let (p, first, last) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    Some((p.parse().ok()?, first.parse().ok()?, last.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_names_round_trip() {
        let prefix = job_prefix("tx", "transactions");
        for p in [0, 7, i32::MAX] {
            let k = key("tx", "transactions", p);
            assert!(k.starts_with(&prefix));
            assert_eq!(partition_of(&prefix, &k), Some(p));
            // Another job's or topic's keys are not under this prefix.
            assert!(!key("tx2", "transactions", p).starts_with(&prefix));
            assert!(!key("tx", "transactions2", p).starts_with(&prefix));
        }
        let c = Stored {
            next: 12_345,
            offline_floor: 12_000,
        };
        assert_eq!(decode(&encode(c)), Some(c));
        assert_eq!(decode(b"short"), None);
        assert_eq!(decode(&[0; 17]), None);
        let n = file_name("tx", 3, 100, 199);
        assert_eq!(
            n,
            "ingest-tx-p00003-00000000000000000100-00000000000000000199.parquet"
        );
        assert_eq!(parse_file_name("tx", &n), Some((3, 100, 199)));
        assert_eq!(parse_file_name("t", &n), None);
        assert_eq!(parse_file_name("tx", "push-1.parquet"), None);
        assert_eq!(parse_file_name("tx", "ingest-tx-p1-2-3-4.parquet"), None);
    }
}
