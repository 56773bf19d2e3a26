//! Network weights as Kafka records: a learner publishes each version of its network as chunks,
//! and every replica assembles, verifies and only then swaps in a version.
//!
//! Why chunks: a catalogue-scale network is tens of megabytes (186,192 item vectors of 64
//! floats are 48 MB), far above Kafka's 1 MB default `max.message.bytes`; raising that limit
//! to the network's size would make every broker and fetch buffer as large. A version is split
//! into chunks of at most `chunk_bytes` (512 KiB by default, [`DEFAULT_CHUNK_BYTES`]); each chunk
//! is one record keyed `{model}/{index}`, so a compacted topic keeps the newest copy of each
//! chunk of each model, and a replica that starts late reads the topic from the beginning and
//! finds the latest complete version.
//!
//! Every chunk carries the whole version's identity in its headers ([`WeightsMeta`]): the model,
//! the version (monotonic per model), the network's shape identity (a replica refuses weights of
//! another network), the chunk count, the blob's length and its checksum (xxh3-128 of the whole
//! blob). [`Assembler`] collects chunks in any order, with duplicates and with chunks of older
//! versions interleaved (what compaction leaves), and hands out a version only when all its
//! chunks arrived, agree on the identity, add up to the length and match the checksum. A version
//! that fails is rejected with the reason and counted; the replica keeps serving what it has.
//!
//! Invariant: [`Assembler::offer`] returns a version at most once, and only versions newer than
//! every version it returned before.

use std::collections::BTreeMap;

/// Default size of a chunk's payload: 512 KiB, with key and headers well under the default
/// limits of the broker (`message.max.bytes`, 1 MiB) and of librdkafka (1,000,000 bytes), so
/// neither the topic nor any client needs a raised limit.
pub const DEFAULT_CHUNK_BYTES: usize = 512 << 10;

/// Versions an [`Assembler`] collects at once; a chunk of an older one than these drops it.
pub const MAX_PARTIAL_VERSIONS: usize = 2;

/// The header names of a weights chunk.
pub mod header {
    /// The model, e.g. `fashion-dqn`.
    pub const MODEL: &str = "weights.model";
    /// The version, a decimal `u64`.
    pub const VERSION: &str = "weights.version";
    /// The network's shape identity.
    pub const SHAPE: &str = "weights.shape";
    /// This chunk's index, decimal, `0..chunks`.
    pub const INDEX: &str = "weights.index";
    /// The version's chunk count, decimal.
    pub const CHUNKS: &str = "weights.chunks";
    /// The whole blob's length in bytes, decimal.
    pub const LEN: &str = "weights.len";
    /// xxh3-128 of the whole blob, 32 lowercase hex digits.
    pub const CHECKSUM: &str = "weights.xxh3-128";
}

/// What identifies one published version of a network's weights.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WeightsMeta {
    /// The model, e.g. `fashion-dqn`: the records of several models share the topic.
    pub model: String,
    /// Monotonic per model.
    pub version: u64,
    /// The network's shape identity: a replica only loads weights of its own network.
    pub shape: String,
    /// Chunks of this version.
    pub chunks: u32,
    /// Length of the whole blob, bytes.
    pub len: u64,
    /// xxh3-128 of the whole blob, 32 lowercase hex digits.
    pub checksum: String,
}

/// One record of the weights topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    /// The version this chunk belongs to.
    pub meta: WeightsMeta,
    /// This chunk's place, `0..meta.chunks`.
    pub index: u32,
    /// Its slice of the blob.
    pub bytes: Vec<u8>,
}

/// A version that arrived whole and verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Complete {
    /// Its identity.
    pub meta: WeightsMeta,
    /// The blob, `meta.len` bytes whose checksum is `meta.checksum`.
    pub blob: Vec<u8>,
}

/// Why a chunk or a version was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WeightsError {
    /// A header is missing or does not parse.
    #[error("weights chunk header {name}: {why}")]
    Header {
        /// The header's name.
        name: &'static str,
        /// What is wrong with it.
        why: String,
    },
    /// The record's key is not `{model}/{index}` of its headers.
    #[error("weights chunk key {key:?} is not {expected:?}")]
    Key {
        /// The key found.
        key: String,
        /// The key the headers imply.
        expected: String,
    },
    /// Chunks of one version disagree on its identity.
    #[error("weights version {version}: chunks disagree on the version's identity")]
    Inconsistent {
        /// The version.
        version: u64,
    },
    /// The chunks of a version do not add up to its length.
    #[error("weights version {version}: chunks hold {got} bytes, the version says {len}")]
    Length {
        /// The version.
        version: u64,
        /// Bytes received.
        got: u64,
        /// Bytes announced.
        len: u64,
    },
    /// The blob does not match its checksum.
    #[error("weights version {version}: checksum {got} does not match {expected}")]
    Checksum {
        /// The version.
        version: u64,
        /// The checksum of the bytes received.
        got: String,
        /// The checksum announced.
        expected: String,
    },
    /// The blob needs more chunks than a `u32` counts (raise the chunk size).
    #[error("weights blob would need {chunks} chunks")]
    TooManyChunks {
        /// Chunks needed.
        chunks: usize,
    },
    /// The weights are of another network than the replica's.
    #[error("weights version {version} are for network {got:?}, this one is {expected:?}")]
    Shape {
        /// The version.
        version: u64,
        /// The shape announced.
        got: String,
        /// The replica's shape.
        expected: String,
    },
}

/// xxh3-128 of `blob`, as 32 lowercase hex digits.
pub fn checksum(blob: &[u8]) -> String {
    format!("{:032x}", xxhash_rust::xxh3::xxh3_128(blob))
}

/// Splits `blob`, version `version` of `model` with shape identity `shape`, into chunks of at
/// most `chunk_bytes` (at least one chunk, even for an empty blob); fails when that makes more
/// chunks than a `u32` counts.
pub fn split(
    model: &str,
    version: u64,
    shape: &str,
    blob: &[u8],
    chunk_bytes: usize,
) -> Result<Vec<Chunk>, WeightsError> {
    let size = chunk_bytes.max(1);
    let pieces: Vec<&[u8]> = if blob.is_empty() { vec![blob] } else { blob.chunks(size).collect() };
    let chunks = u32::try_from(pieces.len()).map_err(|_| WeightsError::TooManyChunks { chunks: pieces.len() })?;
    let meta = WeightsMeta {
        model: model.to_string(),
        version,
        shape: shape.to_string(),
        chunks,
        len: blob.len() as u64,
        checksum: checksum(blob),
    };
    Ok(pieces.into_iter().zip(0..).map(|(p, index)| Chunk { meta: meta.clone(), index, bytes: p.to_vec() }).collect())
}

impl Chunk {
    /// The record's key: `{model}/{index}`, so that compaction keeps each chunk's newest copy.
    pub fn key(&self) -> String {
        key(&self.meta.model, self.index)
    }

    /// The record's headers.
    pub fn headers(&self) -> Vec<(&'static str, String)> {
        let m = &self.meta;
        vec![
            (header::MODEL, m.model.clone()),
            (header::VERSION, m.version.to_string()),
            (header::SHAPE, m.shape.clone()),
            (header::INDEX, self.index.to_string()),
            (header::CHUNKS, m.chunks.to_string()),
            (header::LEN, m.len.to_string()),
            (header::CHECKSUM, m.checksum.clone()),
        ]
    }

    /// A chunk from a record's key, headers (name, value) and value.
    pub fn from_record<'h>(
        key: &str,
        headers: impl IntoIterator<Item = (&'h str, &'h [u8])>,
        value: &[u8],
    ) -> Result<Self, WeightsError> {
        let headers: Vec<(&str, &[u8])> = headers.into_iter().collect();
        let text = |name: &'static str| -> Result<String, WeightsError> {
            let (_, v) = headers
                .iter()
                .rev()
                .find(|(n, _)| *n == name)
                .ok_or(WeightsError::Header { name, why: "missing".into() })?;
            String::from_utf8(v.to_vec()).map_err(|_| WeightsError::Header { name, why: "not UTF-8".into() })
        };
        let number = |name: &'static str| -> Result<u64, WeightsError> {
            let t = text(name)?;
            t.parse().map_err(|_| WeightsError::Header { name, why: format!("{t:?} is not a number") })
        };
        let small = |name: &'static str| -> Result<u32, WeightsError> {
            u32::try_from(number(name)?).map_err(|_| WeightsError::Header { name, why: "too large".into() })
        };
        let meta = WeightsMeta {
            model: text(header::MODEL)?,
            version: number(header::VERSION)?,
            shape: text(header::SHAPE)?,
            chunks: small(header::CHUNKS)?,
            len: number(header::LEN)?,
            checksum: text(header::CHECKSUM)?,
        };
        let index = small(header::INDEX)?;
        if meta.chunks == 0 || index >= meta.chunks {
            return Err(WeightsError::Header {
                name: header::INDEX,
                why: format!("{index} outside 0..{}", meta.chunks),
            });
        }
        let expected = self::key(&meta.model, index);
        if key != expected {
            return Err(WeightsError::Key { key: key.to_string(), expected });
        }
        Ok(Self { meta, index, bytes: value.to_vec() })
    }
}

/// The key of chunk `index` of `model`.
fn key(model: &str, index: u32) -> String {
    format!("{model}/{index:05}")
}

/// The chunks of one version received so far.
#[derive(Debug)]
struct Partial {
    meta: WeightsMeta,
    parts: Vec<Option<Vec<u8>>>,
    have: usize,
}

/// Collects the chunks of one model and hands out each version that arrived whole and verified
/// (see the module documentation).
#[derive(Debug)]
pub struct Assembler {
    model: String,
    shape: Option<String>,
    served: Option<u64>,
    partial: BTreeMap<u64, Partial>,
    rejected: u64,
    /// The last version refused for its shape.
    wrong_shape: Option<u64>,
}

impl Assembler {
    /// Collects the versions of `model`; with `shape`, versions of another network are refused.
    pub fn new(model: &str, shape: Option<&str>) -> Self {
        Self {
            model: model.to_string(),
            shape: shape.map(str::to_string),
            served: None,
            partial: BTreeMap::new(),
            rejected: 0,
            wrong_shape: None,
        }
    }

    /// The newest version handed out.
    pub fn served(&self) -> Option<u64> {
        self.served
    }

    /// Versions refused so far.
    pub fn rejected(&self) -> u64 {
        self.rejected
    }

    /// Takes one chunk. Returns the version it completes, if it completes one that verifies;
    /// an error when it or the version it completes is refused (the version is dropped and
    /// counted, and what was served before stays the newest). Chunks of other models and of
    /// versions not newer than the one served are ignored.
    pub fn offer(&mut self, chunk: Chunk) -> Result<Option<Complete>, WeightsError> {
        let version = chunk.meta.version;
        if chunk.meta.model != self.model || self.served.is_some_and(|v| version <= v) {
            return Ok(None);
        }
        if let Some(expected) = self.shape.as_ref().filter(|s| **s != chunk.meta.shape) {
            // Counted once per version, not per chunk.
            if self.wrong_shape != Some(version) {
                (self.rejected, self.wrong_shape) = (self.rejected + 1, Some(version));
            }
            return Err(WeightsError::Shape { version, got: chunk.meta.shape, expected: expected.clone() });
        }
        if !self.partial.contains_key(&version) {
            if self.partial.len() >= MAX_PARTIAL_VERSIONS {
                match self.partial.keys().next() {
                    // Older than every version being collected: it can no longer matter.
                    Some(&oldest) if version < oldest => return Ok(None),
                    Some(&oldest) => {
                        self.partial.remove(&oldest);
                    }
                    None => {}
                }
            }
            let parts = vec![None; chunk.meta.chunks as usize];
            self.partial.insert(version, Partial { meta: chunk.meta.clone(), parts, have: 0 });
        }
        let Some(p) = self.partial.get_mut(&version) else { return Ok(None) };
        if p.meta != chunk.meta {
            self.partial.remove(&version);
            self.rejected += 1;
            return Err(WeightsError::Inconsistent { version });
        }
        let Some(slot) = p.parts.get_mut(chunk.index as usize) else {
            self.rejected += 1;
            let why = format!("{} outside 0..{}", chunk.index, chunk.meta.chunks);
            return Err(WeightsError::Header { name: header::INDEX, why });
        };
        if slot.is_none() {
            p.have += 1;
        }
        *slot = Some(chunk.bytes);
        if p.have < p.parts.len() {
            return Ok(None);
        }
        let Some(p) = self.partial.remove(&version) else { return Ok(None) };
        let blob: Vec<u8> = p.parts.into_iter().flatten().flatten().collect();
        if blob.len() as u64 != p.meta.len {
            self.rejected += 1;
            return Err(WeightsError::Length { version, got: blob.len() as u64, len: p.meta.len });
        }
        let got = checksum(&blob);
        if got != p.meta.checksum {
            self.rejected += 1;
            return Err(WeightsError::Checksum { version, got, expected: p.meta.checksum });
        }
        self.served = Some(version);
        self.partial.retain(|&v, _| v > version);
        Ok(Some(Complete { meta: p.meta, blob }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(model: &str, version: u64, shape: &str, blob: &[u8], chunk_bytes: usize) -> Vec<Chunk> {
        super::split(model, version, shape, blob, chunk_bytes).unwrap_or_else(|e| panic!("{e}"))
    }

    fn blob(n: usize, seed: u8) -> Vec<u8> {
        (0..n).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
    }

    /// A chunk through its record form, as a replica reads it.
    fn through_record(c: &Chunk) -> Result<Chunk, WeightsError> {
        let headers: Vec<(&str, String)> = c.headers();
        Chunk::from_record(&c.key(), headers.iter().map(|(n, v)| (*n, v.as_bytes())), &c.bytes)
    }

    fn offer_all(a: &mut Assembler, chunks: &[Chunk]) -> Vec<Result<Option<Complete>, WeightsError>> {
        chunks.iter().map(|c| a.offer(through_record(c).unwrap_or_else(|e| panic!("{e}")))).collect()
    }

    #[test]
    fn a_version_split_and_offered_in_any_order_with_duplicates_comes_back_once_and_whole() {
        let b = blob(10_000, 1);
        let mut chunks = split("m", 3, "mlp-64", &b, 1_024);
        assert_eq!(chunks.len(), 10);
        assert!(chunks.iter().all(|c| c.bytes.len() <= 1_024 && c.key().starts_with("m/")));
        chunks.reverse();
        let dup = chunks[4].clone();
        chunks.insert(2, dup);
        let mut a = Assembler::new("m", Some("mlp-64"));
        let out = offer_all(&mut a, &chunks);
        let done: Vec<&Complete> = out.iter().filter_map(|r| r.as_ref().ok().and_then(Option::as_ref)).collect();
        assert_eq!(done.len(), 1, "handed out once");
        assert_eq!((done[0].blob.as_slice(), done[0].meta.version), (b.as_slice(), 3));
        assert!(out.iter().all(Result::is_ok));
        // The same version again (a re-read of the topic) is old news.
        assert!(offer_all(&mut a, &chunks).iter().all(|r| matches!(r, Ok(None))));
        assert_eq!((a.served(), a.rejected()), (Some(3), 0));
        // An empty blob is one empty chunk.
        let empty = split("m", 4, "mlp-64", &[], 1_024);
        assert_eq!(offer_all(&mut a, &empty).pop().and_then(Result::ok).flatten().map(|c| c.blob), Some(vec![]));
    }

    #[test]
    fn a_corrupted_or_truncated_chunk_is_refused_and_the_version_served_stays() {
        let mut a = Assembler::new("m", None);
        let v1 = split("m", 1, "s", &blob(3_000, 1), 1_000);
        assert!(offer_all(&mut a, &v1).into_iter().any(|r| matches!(r, Ok(Some(_)))));
        // One flipped byte.
        let mut v2 = split("m", 2, "s", &blob(3_000, 2), 1_000);
        v2[1].bytes[17] ^= 0x40;
        let out = offer_all(&mut a, &v2);
        assert!(matches!(out.last(), Some(Err(WeightsError::Checksum { version: 2, .. }))), "{out:?}");
        // One chunk cut short.
        let mut v3 = split("m", 3, "s", &blob(3_000, 3), 1_000);
        v3[2].bytes.truncate(10);
        let out = offer_all(&mut a, &v3);
        assert!(
            matches!(out.last(), Some(Err(WeightsError::Length { version: 3, got: 2_010, len: 3_000 }))),
            "{out:?}"
        );
        assert_eq!((a.served(), a.rejected()), (Some(1), 2), "still serving version 1");
        // A sound version after them is taken.
        let v4 = split("m", 4, "s", &blob(3_000, 4), 1_000);
        assert!(matches!(
            offer_all(&mut a, &v4).pop(),
            Some(Ok(Some(Complete { meta: WeightsMeta { version: 4, .. }, .. })))
        ));
    }

    #[test]
    fn what_compaction_leaves_mixed_versions_yields_only_complete_ones() {
        // Version 2 is being published over version 1: the topic holds chunk 0 of version 2 and
        // chunks 1, 2 of version 1, then the rest of version 2 arrives.
        let (b1, b2) = (blob(2_500, 1), blob(2_500, 2));
        let (v1, v2) = (split("m", 1, "s", &b1, 1_000), split("m", 2, "s", &b2, 1_000));
        let mut a = Assembler::new("m", None);
        let out = offer_all(&mut a, &[v2[0].clone(), v1[1].clone(), v1[2].clone()]);
        assert!(out.iter().all(|r| matches!(r, Ok(None))), "nothing complete yet: {out:?}");
        let out = offer_all(&mut a, &[v2[1].clone(), v2[2].clone()]);
        assert_eq!(out.last().cloned().and_then(Result::ok).flatten().map(|c| c.blob), Some(b2));
        // Version 1's chunk 0 arriving late cannot bring it back.
        assert!(matches!(offer_all(&mut a, &v1[..1]).pop(), Some(Ok(None))));
        assert_eq!(a.served(), Some(2));
    }

    #[test]
    fn other_models_are_ignored_and_other_networks_refused() {
        let mut a = Assembler::new("fashion-dqn", Some("tower-64"));
        let other = split("recogym-dqn", 1, "mlp", &blob(10, 0), 4);
        assert!(offer_all(&mut a, &other).iter().all(|r| matches!(r, Ok(None))));
        let wrong = split("fashion-dqn", 1, "mlp", &blob(10, 0), 4);
        assert_eq!(wrong.len(), 3);
        assert!(offer_all(&mut a, &wrong).iter().all(|r| matches!(r, Err(WeightsError::Shape { .. }))));
        assert_eq!((a.served(), a.rejected()), (None, 1), "one version refused, whatever its chunk count");
    }

    #[test]
    fn chunks_of_one_version_that_disagree_drop_it() {
        let mut a = Assembler::new("m", None);
        let v = split("m", 5, "s", &blob(2_000, 1), 1_000);
        let mut liar = v[1].clone();
        liar.meta.checksum = checksum(b"something else");
        let out = offer_all(&mut a, &[v[0].clone(), liar]);
        assert!(matches!(out.last(), Some(Err(WeightsError::Inconsistent { version: 5 }))), "{out:?}");
        assert_eq!(a.rejected(), 1);
    }

    #[test]
    fn bad_records_name_what_is_wrong() {
        let c = split("m", 1, "s", &blob(10, 0), 100).remove(0);
        let headers = c.headers();
        let record = |skip: &str, key: &str| {
            let hs: Vec<(&str, &[u8])> =
                headers.iter().filter(|(n, _)| *n != skip).map(|(n, v)| (*n, v.as_bytes())).collect();
            Chunk::from_record(key, hs, &c.bytes)
        };
        assert_eq!(record("", "m/00000"), Ok(c.clone()));
        assert!(matches!(
            record(header::CHECKSUM, "m/00000"),
            Err(WeightsError::Header { name: header::CHECKSUM, .. })
        ));
        assert!(matches!(record("", "m/00001"), Err(WeightsError::Key { .. })));
        let bad: Vec<(&str, &[u8])> = headers
            .iter()
            .map(|(n, v)| (*n, if *n == header::VERSION { b"v2".as_slice() } else { v.as_bytes() }))
            .collect();
        let e = Chunk::from_record("m/00000", bad, &c.bytes).err().map(|e| e.to_string());
        assert_eq!(e.as_deref(), Some("weights chunk header weights.version: \"v2\" is not a number"));
        let past: Vec<(&str, &[u8])> = headers
            .iter()
            .map(|(n, v)| (*n, if *n == header::INDEX { b"7".as_slice() } else { v.as_bytes() }))
            .collect();
        assert!(matches!(
            Chunk::from_record("m/00007", past, &c.bytes),
            Err(WeightsError::Header { name: header::INDEX, .. })
        ));
    }
}
