//! Sorted spill runs: how materialize keeps the newest row per entity of a plain
//! view within a fixed memory budget, however many entities the window holds.
//!
//! ```text
//! partition scan ──fold──> winners map ──past its share of the budget──> drain
//!                                                                          │ sort by key
//!   quiver-staging/spill-<pid>-<n>/run-000000.bin, run-000001.bin, ... <───┘
//!        │  (each run: ascending keys, one record per key)
//!        └── Merge: a BinaryHeap of every run's head ── per key, the greatest
//!            (event, created) ──> (key, version, value) in key order ──> commit
//! ```
//!
//! A record is `key length u32 LE | key | event i64 LE | created i64 LE | value
//! length u32 LE | value`. A [`Run`] knows how many records it holds, so a
//! truncated file is an error, never a short result. The [`SpillDir`] is
//! created at the first spill and removed with its runs when its last holder
//! drops it (the end of the commit, an error, a dropped call); the runs of a
//! killed process go when the online store next opens (they live in its
//! staging folder). Memory while merging: one record and one read buffer per run.

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{self, AtomicU64};
use std::sync::{Arc, Mutex};

use crate::error::ErrorKind;
use crate::online::{self, ScratchDir, Versioned};

/// Buffer of a run being written.
const WRITE_BUFFER_BYTES: usize = 1 << 20;
/// Buffer of each run being merged.
const READ_BUFFER_BYTES: usize = 64 << 10;

/// Errors of spill runs.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Writing or reading a run failed.
    #[error("materialize spill file {path}: {source}")]
    Io {
        /// The run file.
        path: PathBuf,
        /// The IO error.
        #[source]
        source: io::Error,
    },
    /// A run file ends before its last record.
    #[error("materialize spill file {path} is truncated: {missing} of its records are missing")]
    Truncated {
        /// The run file.
        path: PathBuf,
        /// Records not read.
        missing: u64,
    },
    /// The spill folder could not be created.
    #[error(transparent)]
    Folder(#[from] online::Error),
}

/// Result type of this module.
pub(crate) type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// How this error should be reported to a caller.
    pub fn kind(&self) -> ErrorKind {
        match self {
            // A full or failing disk, as for the online store's own staging files.
            Error::Io { .. } => ErrorKind::Unavailable,
            Error::Truncated { .. } => ErrorKind::Internal,
            Error::Folder(e) => e.kind(),
        }
    }
}

/// Where one materialization's runs go: a folder under the online store's
/// staging folder, created with the first run and removed (runs included) when
/// dropped. Shared by the partitions' tasks.
#[derive(Debug)]
pub(crate) struct SpillDir {
    parent: PathBuf,
    dir: Mutex<Option<ScratchDir>>,
    next: AtomicU64,
}

/// One sorted run on disk: its file and how many records it holds.
#[derive(Debug)]
pub(crate) struct Run {
    path: PathBuf,
    records: u64,
}

impl SpillDir {
    /// Spills into a new folder under `parent` (nothing is created before the
    /// first [`SpillDir::write`]).
    pub(crate) fn new(parent: PathBuf) -> Self {
        Self {
            parent,
            dir: Mutex::new(None),
            next: AtomicU64::new(0),
        }
    }

    /// The folder, created on first use.
    fn folder(&self) -> Result<PathBuf> {
        let mut dir = self.dir.lock().unwrap_or_else(|p| p.into_inner());
        if dir.is_none() {
            *dir = Some(ScratchDir::create(&self.parent, "spill")?);
        }
        Ok(dir.as_ref().expect("created above").path().to_path_buf())
    }

    /// Writes `entries` as a new run, sorted by key; of a key given more than
    /// once, only the greatest version is kept (the first given on a tie).
    pub(crate) fn write(&self, mut entries: Vec<Versioned>) -> Result<Run> {
        // Stable: on a tie, the first given stays first and is kept.
        entries.sort_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
        entries.dedup_by(|later, earlier| later.0 == earlier.0);
        let n = self.next.fetch_add(1, atomic::Ordering::Relaxed);
        let path = self.folder()?.join(format!("run-{n:06}.bin"));
        write_records(&path, &entries).map_err(|source| Error::Io {
            path: path.clone(),
            source,
        })?;
        Ok(Run {
            path,
            records: entries.len() as u64,
        })
    }

    /// The folder, if a run was written (tests check it goes).
    #[cfg(test)]
    fn path(&self) -> Option<PathBuf> {
        let dir = self.dir.lock().unwrap_or_else(|p| p.into_inner());
        dir.as_ref().map(|d| d.path().to_path_buf())
    }
}

fn write_records(path: &Path, entries: &[Versioned]) -> io::Result<()> {
    let mut out = BufWriter::with_capacity(WRITE_BUFFER_BYTES, File::create(path)?);
    for (key, (event, created), value) in entries {
        write_bytes(&mut out, key)?;
        out.write_all(&event.to_le_bytes())?;
        out.write_all(&created.to_le_bytes())?;
        write_bytes(&mut out, value)?;
    }
    out.flush()
}

fn write_bytes<W: Write>(out: &mut W, bytes: &[u8]) -> io::Result<()> {
    let len = u32::try_from(bytes.len()).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "a key or value of 4 GiB or more cannot be spilled",
        )
    })?;
    out.write_all(&len.to_le_bytes())?;
    out.write_all(bytes)
}

fn read_array<R: Read, const N: usize>(input: &mut R) -> io::Result<[u8; N]> {
    let mut bytes = [0u8; N];
    input.read_exact(&mut bytes)?;
    Ok(bytes)
}

fn read_bytes<R: Read>(input: &mut R) -> io::Result<Vec<u8>> {
    let len = u64::from(u32::from_le_bytes(read_array(input)?));
    // Grown as bytes arrive: a damaged length cannot allocate gigabytes up front.
    let mut bytes = Vec::with_capacity(len.min(1 << 16) as usize);
    (&mut *input).take(len).read_to_end(&mut bytes)?;
    if bytes.len() as u64 != len {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    Ok(bytes)
}

fn read_record<R: Read>(input: &mut R) -> io::Result<Versioned> {
    let key = read_bytes(input)?;
    let event = i64::from_le_bytes(read_array(input)?);
    let created = i64::from_le_bytes(read_array(input)?);
    let value = read_bytes(input)?;
    Ok((key, (event, created), value))
}

/// Reads one run's records in order.
#[derive(Debug)]
struct RunReader {
    path: PathBuf,
    input: BufReader<File>,
    left: u64,
}

impl RunReader {
    fn open(run: Run) -> Result<Self> {
        let file = File::open(&run.path).map_err(|source| Error::Io {
            path: run.path.clone(),
            source,
        })?;
        Ok(Self {
            path: run.path,
            input: BufReader::with_capacity(READ_BUFFER_BYTES, file),
            left: run.records,
        })
    }

    /// The next record, `None` after the last.
    fn read_next(&mut self) -> Result<Option<Versioned>> {
        if self.left == 0 {
            return Ok(None);
        }
        match read_record(&mut self.input) {
            Ok(record) => {
                self.left -= 1;
                Ok(Some(record))
            }
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Err(Error::Truncated {
                path: self.path.clone(),
                missing: self.left,
            }),
            Err(source) => Err(Error::Io {
                path: self.path.clone(),
                source,
            }),
        }
    }
}

/// A run's next record, in the merge's heap.
#[derive(Debug)]
struct Head {
    key: Vec<u8>,
    version: (i64, i64),
    value: Vec<u8>,
    run: usize,
}

impl Ord for Head {
    /// The greatest head pops first: the smallest key, then the greatest
    /// version, then the earliest run.
    fn cmp(&self, other: &Self) -> Ordering {
        (other.key.cmp(&self.key))
            .then(self.version.cmp(&other.version))
            .then(other.run.cmp(&self.run))
    }
}

impl PartialOrd for Head {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Head {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Head {}

/// The k-way merge of runs: each key once, in ascending key order, with its
/// greatest version (on a tie, the one of the earliest run in the list given).
/// It holds the spill folder, so the runs last as long as it reads them. After
/// an error it yields nothing more.
#[derive(Debug)]
pub(crate) struct Merge {
    readers: Vec<RunReader>,
    heap: BinaryHeap<Head>,
    failed: bool,
    _dir: Arc<SpillDir>,
}

impl Merge {
    /// Opens every run of `dir` in `runs` and reads its first record.
    pub(crate) fn open(dir: Arc<SpillDir>, runs: Vec<Run>) -> Result<Self> {
        let readers = (runs.into_iter())
            .map(RunReader::open)
            .collect::<Result<Vec<_>>>()?;
        let mut merge = Self {
            heap: BinaryHeap::with_capacity(readers.len()),
            readers,
            failed: false,
            _dir: dir,
        };
        for run in 0..merge.readers.len() {
            merge.advance(run)?;
        }
        Ok(merge)
    }

    /// Puts the next record of `run`, if any, in the heap.
    fn advance(&mut self, run: usize) -> Result<()> {
        if let Some((key, version, value)) = self.readers[run].read_next()? {
            self.heap.push(Head {
                key,
                version,
                value,
                run,
            });
        }
        Ok(())
    }

    fn next_entry(&mut self) -> Result<Option<Versioned>> {
        let Some(top) = self.heap.pop() else {
            return Ok(None);
        };
        self.advance(top.run)?;
        // The same key in other runs: older, or tied in a later run.
        while self.heap.peek().is_some_and(|h| h.key == top.key) {
            if let Some(older) = self.heap.pop() {
                self.advance(older.run)?;
            }
        }
        Ok(Some((top.key, top.version, top.value)))
    }
}

impl Iterator for Merge {
    type Item = Result<Versioned>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        let next = self.next_entry().transpose();
        self.failed = matches!(next, Some(Err(_)));
        next
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::*;

    fn entry(key: u32, version: (i64, i64), value: &str) -> Versioned {
        (
            key.to_be_bytes().to_vec(),
            version,
            value.as_bytes().to_vec(),
        )
    }

    /// A key's version and value.
    type Newest = ((i64, i64), Vec<u8>);

    /// The newest of `entries` per key, the first given on a tie, in key order.
    fn reference(entries: &[Versioned]) -> Vec<Versioned> {
        let mut best: BTreeMap<Vec<u8>, Newest> = BTreeMap::new();
        for (k, v, value) in entries {
            match best.get(k) {
                Some((have, _)) if have >= v => {}
                _ => {
                    best.insert(k.clone(), (*v, value.clone()));
                }
            }
        }
        best.into_iter()
            .map(|(k, (v, value))| (k, v, value))
            .collect()
    }

    fn merged(spill: Arc<SpillDir>, runs: Vec<Run>) -> Result<Vec<Versioned>> {
        Merge::open(spill, runs)?.collect()
    }

    #[test]
    fn spill_and_merge_equal_an_in_memory_reference() {
        let tmp = tempfile::tempdir().unwrap();
        for seed in 0..20 {
            let mut rng = StdRng::seed_from_u64(seed);
            let spill = Arc::new(SpillDir::new(tmp.path().join("staging")));
            let mut all = Vec::new();
            let mut runs = Vec::new();
            for _ in 0..rng.random_range(0..12) {
                // Some runs are empty; keys repeat within and across runs, and
                // small version ranges make ties (broken by the first given).
                let run: Vec<Versioned> = (0..rng.random_range(0..60))
                    .map(|i| {
                        let key = rng.random_range(0..80u32);
                        let version = (rng.random_range(0..4i64), rng.random_range(0..3i64));
                        entry(key, version, &format!("s{seed}-r{}-{i}", runs.len()))
                    })
                    .collect();
                all.extend(run.iter().cloned());
                runs.push(spill.write(run).unwrap());
            }
            let got = merged(spill, runs).unwrap();
            assert_eq!(got, reference(&all), "seed {seed}");
            assert!(got.windows(2).all(|w| w[0].0 < w[1].0), "ascending keys");
        }
    }

    #[test]
    fn keys_of_different_lengths_merge_in_byte_order() {
        let tmp = tempfile::tempdir().unwrap();
        let spill = Arc::new(SpillDir::new(tmp.path().to_path_buf()));
        let e = |k: &[u8], t: i64| (k.to_vec(), (t, 0), vec![t as u8]);
        let a = spill.write(vec![e(b"ab", 1), e(b"b", 1)]).unwrap();
        let b = spill
            .write(vec![e(b"a", 2), e(b"abc", 2), e(b"b", 2)])
            .unwrap();
        let c = spill.write(Vec::new()).unwrap();
        let got = merged(spill, vec![a, b, c]).unwrap();
        assert_eq!(got, vec![e(b"a", 2), e(b"ab", 1), e(b"abc", 2), e(b"b", 2)]);
    }

    #[test]
    fn no_runs_merge_to_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let spill = Arc::new(SpillDir::new(tmp.path().to_path_buf()));
        assert!(merged(spill, Vec::new()).unwrap().is_empty());
    }

    #[test]
    fn a_truncated_run_is_an_error_not_a_panic_or_a_short_result() {
        let tmp = tempfile::tempdir().unwrap();
        let rows: Vec<Versioned> = (0..10).map(|k| entry(k, (k as i64, 0), "value")).collect();
        // Cut inside a record, at a record boundary, and to nothing.
        let record_len = {
            let spill = SpillDir::new(tmp.path().join("probe"));
            let run = spill.write(rows[..1].to_vec()).unwrap();
            std::fs::metadata(&run.path).unwrap().len()
        };
        for keep in [5 * record_len + 3, 5 * record_len, 0] {
            let spill = Arc::new(SpillDir::new(tmp.path().join("staging")));
            let good = spill.write(rows[..3].to_vec()).unwrap();
            let run = spill.write(rows.clone()).unwrap();
            let file = std::fs::OpenOptions::new()
                .write(true)
                .open(&run.path)
                .unwrap();
            file.set_len(keep).unwrap();
            let e = merged(spill, vec![good, run]).unwrap_err();
            assert!(matches!(e, Error::Truncated { .. }), "{e:?}");
            assert!(e.to_string().contains("is truncated"), "{e}");
            assert_eq!(e.kind(), ErrorKind::Internal);
        }
    }

    #[test]
    fn a_merge_stops_after_an_error() {
        let tmp = tempfile::tempdir().unwrap();
        let spill = Arc::new(SpillDir::new(tmp.path().to_path_buf()));
        let rows: Vec<Versioned> = (0..4).map(|k| entry(k, (1, 0), "v")).collect();
        let run = spill.write(rows).unwrap();
        let record_len = std::fs::metadata(&run.path).unwrap().len() / 4;
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(&run.path)
            .unwrap();
        file.set_len(2 * record_len + 1).unwrap();
        let mut merge = Merge::open(spill, vec![run]).unwrap();
        assert!(matches!(merge.next(), Some(Ok(_))));
        // The second record is read ahead when the first is returned.
        let mut results: Vec<_> = merge.by_ref().collect();
        assert!(matches!(results.pop(), Some(Err(Error::Truncated { .. }))));
        assert!(merge.next().is_none());
    }

    #[test]
    fn the_spill_folder_is_created_lazily_and_removed_on_drop() {
        let tmp = tempfile::tempdir().unwrap();
        let staging = tmp.path().join("quiver-staging");
        let spill = Arc::new(SpillDir::new(staging.clone()));
        assert_eq!(spill.path(), None);
        assert!(!staging.exists(), "nothing created before the first run");
        let run = spill.write(vec![entry(1, (1, 0), "a")]).unwrap();
        let dir = spill.path().unwrap();
        assert!(dir.starts_with(&staging) && run.path.starts_with(&dir));
        assert!(run.path.exists());
        let merge = Merge::open(spill.clone(), vec![run]).unwrap();
        drop(spill);
        assert!(dir.exists(), "the merge holds the folder");
        assert_eq!(merge.count(), 1);
        assert!(!dir.exists(), "removed with its last holder");
        assert!(staging.exists(), "the staging folder stays");
    }
}
