//! Join key kinds, shared by the offline join and the online store so both sides
//! agree on which columns can be keys and how they compare; and [`InlineKey`],
//! the encoded key the hash tables of materialize, and of the join for keys
//! other than one integer, hold.

use std::borrow::Borrow;
use std::hash::{Hash, Hasher};

use arrow::datatypes::DataType;

/// The kind of a join key: any integer column (compared and stored as i64) or any
/// string column (as UTF-8).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum KeyType {
    /// Any integer column, widened to i64.
    Int64,
    /// Any string column.
    Utf8,
}

impl KeyType {
    /// The Arrow type key columns are normalized to (both sides of a join, and the
    /// online store's keys).
    pub(crate) fn data_type(self) -> DataType {
        match self {
            KeyType::Int64 => DataType::Int64,
            KeyType::Utf8 => DataType::Utf8,
        }
    }

    /// The key type for an Arrow column type, if it can be a join key.
    pub(crate) fn of(t: &DataType) -> Option<Self> {
        match t {
            DataType::Int8
            | DataType::Int16
            | DataType::Int32
            | DataType::Int64
            | DataType::UInt8
            | DataType::UInt16
            | DataType::UInt32 => Some(KeyType::Int64),
            DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => Some(KeyType::Utf8),
            DataType::Dictionary(_, v) => Self::of(v),
            _ => None,
        }
    }
}

/// Key bytes up to this long are kept in the hash table's slot itself.
const INLINE_KEY: usize = 22;

/// An encoded key (arrow's row format in the join, for key sets other than one
/// integer, which the join hashes as the integer; the online store's key in
/// materialize: 17 bytes for one integer key) as a hash table holds it: keys up
/// to 22 bytes inline, so a probe compares bytes already in the table's slot
/// instead of following a pointer to the heap. It hashes and compares as its
/// bytes, so a table of them is searched with a `&[u8]`.
///
/// ```text
/// let mut map: HashMap<InlineKey, u32> = HashMap::new();
/// map.insert(InlineKey::new(b"key"), 1);
/// assert_eq!(map.get(b"key".as_slice()), Some(&1));
/// ```
#[derive(Clone)]
pub(crate) enum InlineKey {
    Inline(u8, [u8; INLINE_KEY]),
    Heap(Box<[u8]>),
}

impl InlineKey {
    pub(crate) fn new(bytes: &[u8]) -> Self {
        if bytes.len() > INLINE_KEY {
            return InlineKey::Heap(bytes.into());
        }
        let mut inline = [0; INLINE_KEY];
        inline[..bytes.len()].copy_from_slice(bytes);
        InlineKey::Inline(bytes.len() as u8, inline)
    }

    /// The bytes.
    pub(crate) fn as_bytes(&self) -> &[u8] {
        match self {
            InlineKey::Inline(n, bytes) => &bytes[..*n as usize],
            InlineKey::Heap(bytes) => bytes,
        }
    }

    /// The bytes, owned.
    pub(crate) fn into_vec(self) -> Vec<u8> {
        match self {
            InlineKey::Inline(n, bytes) => bytes[..n as usize].to_vec(),
            InlineKey::Heap(bytes) => bytes.into_vec(),
        }
    }
}

impl Borrow<[u8]> for InlineKey {
    fn borrow(&self) -> &[u8] {
        self.as_bytes()
    }
}

impl Hash for InlineKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_bytes().hash(state)
    }
}

impl PartialEq for InlineKey {
    fn eq(&self, other: &Self) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl Eq for InlineKey {}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    #[test]
    fn group_keys_hash_and_compare_as_their_bytes_inline_or_not() {
        let mut index: HashMap<InlineKey, u32, foldhash::fast::RandomState> = HashMap::default();
        let keys: Vec<Vec<u8>> = [0usize, 1, 9, 21, 22, 23, 64]
            .iter()
            .map(|&n| (0..n).map(|i| i as u8 ^ 0x5a).collect())
            .collect();
        for (g, k) in keys.iter().enumerate() {
            let key = InlineKey::new(k);
            assert_eq!(matches!(key, InlineKey::Inline(..)), k.len() <= INLINE_KEY);
            index.insert(key, g as u32);
        }
        for (g, k) in keys.iter().enumerate() {
            assert_eq!(
                index.get(k.as_slice()),
                Some(&(g as u32)),
                "key of {} bytes",
                k.len()
            );
        }
        // A prefix of a key, or the key with a trailing zero, is another key.
        assert_eq!(index.get(&keys[3][..20]), None);
        let mut padded = keys[3].clone();
        padded.push(0);
        assert_eq!(index.get(padded.as_slice()), None);
        for k in &keys {
            assert_eq!(&InlineKey::new(k).into_vec(), k);
        }
    }
}
