//! Checkpoints: one file, `<checkpoint-dir>/dqn.ckpt`, holding the network's shape, the action
//! count, the update and epsilon counters, the vocabulary and the online and target weights.
//!
//! Invariant: the file is replaced atomically (written to a temporary file in the same folder,
//! synced, then renamed over the old one), so a crash mid-write leaves the previous checkpoint.
//! The optimizer's moments and the replay buffer are not saved: a resumed learner refills its
//! buffer (`--dqn-learning-starts`) and restarts Adam's moments.
//!
//! Layout: `MAGIC`, then three length-prefixed (u64 little-endian) sections: the JSON [`Meta`],
//! the online weights and the target weights (each as `VarStore::save_to_stream` writes them).
//! The same bytes, with an empty target section, are what a learner publishes on the weights
//! topic for serving replicas ([`encode`], [`decode`]; chunked by `protocol::weights`).

use std::{
    fs,
    io::{self, Write},
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};
use tch::nn::VarStore;

use super::net::NetConfig;

const MAGIC: &[u8; 16] = b"streamrec-dqn\0v1";
/// Layout version written into [`Meta::format`].
pub const FORMAT: u32 = 1;
/// File name inside the checkpoint folder.
pub const FILE_NAME: &str = "dqn.ckpt";

/// Why a checkpoint could not be used.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// Reading, writing or renaming failed.
    #[error("checkpoint {path}: {source}")]
    Io {
        /// The file concerned.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// The file is not a DQN checkpoint of this layout, or it is damaged.
    #[error("checkpoint {path} is not a streamrec dqn checkpoint or is damaged: {reason}")]
    Corrupt {
        /// The file concerned.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The file holds a network of another shape than the flags ask for.
    #[error("checkpoint {path} holds another network ({found}) than the flags ask for ({wanted}); pass matching --dqn-* flags or another --checkpoint-dir, or --dqn-checkpoint-mismatch fresh to set it aside and start afresh")]
    NetMismatch {
        /// The file concerned.
        path: PathBuf,
        /// The network in the file.
        found: String,
        /// The network the flags describe.
        wanted: String,
    },
    /// The file was trained for another action space than the env's states announce.
    #[error("checkpoint {path} was trained for {found} actions but the states announce {wanted}; pass another --checkpoint-dir, or --dqn-checkpoint-mismatch fresh to set it aside and start afresh")]
    ActionsMismatch {
        /// The file concerned.
        path: PathBuf,
        /// Actions in the file.
        found: i64,
        /// Actions the states announce.
        wanted: i64,
    },
    /// The file was trained on another catalogue (same size, other products) than the states'.
    #[error("checkpoint {path} was trained on catalogue {found} but the states come from catalogue {wanted}; pass another --checkpoint-dir, or --dqn-checkpoint-mismatch fresh to set it aside and start afresh")]
    CatalogMismatch {
        /// The file concerned.
        path: PathBuf,
        /// Catalogue fingerprint in the file.
        found: String,
        /// Catalogue fingerprint the states carry.
        wanted: String,
    },
    /// libtorch could not write or read the weights.
    #[error("checkpoint {path}: weights: {source}")]
    Weights {
        /// The file concerned.
        path: PathBuf,
        /// libtorch's error.
        source: tch::TchError,
    },
}

/// Everything but the weights.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Meta {
    /// Layout version ([`FORMAT`]).
    pub format: u32,
    /// Shape of the network.
    pub net: NetConfig,
    /// Size of the action space it was trained for.
    pub n_actions: i64,
    /// Fingerprint of the catalogue (the products behind the action indices) it was trained
    /// on, as the states carry it; `None` in checkpoints written before fingerprints existed
    /// or trained on states without one.
    #[serde(default)]
    pub catalog: Option<String>,
    /// Learner updates done.
    pub updates: u64,
    /// States acted on in training (the epsilon schedule's position).
    pub eps_step: u64,
    /// The vocabulary's words in id order.
    pub vocab: Vec<String>,
    /// The sparse wide table's pairs `(item, action)` in slot order (tower head).
    #[serde(default)]
    pub wide_pairs: Vec<(i64, i64)>,
    /// The items' token ids as the stream showed them (tower head), by item index (empty:
    /// unknown); what a serving replica needs to score items it never saw a state of.
    #[serde(default)]
    pub items: Vec<Vec<i64>>,
    /// Milliseconds since the Unix epoch when written.
    pub saved_at_ms: i64,
}

/// A checkpoint read back: its metadata and the serialized weights.
#[derive(Debug, Clone)]
pub struct Checkpoint {
    /// Where it was read from.
    pub path: PathBuf,
    /// Counters, shape, vocabulary.
    pub meta: Meta,
    online: Vec<u8>,
    target: Vec<u8>,
}

/// The checkpoint file inside `dir`.
pub fn file_in(dir: &Path) -> PathBuf {
    dir.join(FILE_NAME)
}

/// `dir` with every `{host}` replaced by `host`, so that replicas sharing one volume (compose's
/// `--scale`) each get a folder of their own.
pub fn expand_dir(dir: &Path, host: &str) -> PathBuf {
    PathBuf::from(dir.to_string_lossy().replace("{host}", host))
}

/// Writes `path` atomically: `write` fills a temporary file in the same folder, which is synced
/// and renamed over `path`; on any error the temporary file is removed and `path` is untouched.
pub fn write_atomic<F>(path: &Path, write: F) -> io::Result<()>
where
    F: FnOnce(&mut io::BufWriter<fs::File>) -> io::Result<()>,
{
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    fs::create_dir_all(dir)?;
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!(".{name}.{}.partial", std::process::id()));
    let result = (|| {
        let mut out = io::BufWriter::new(fs::File::create(&tmp)?);
        write(&mut out)?;
        let file = out.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        fs::rename(&tmp, path)?;
        // Make the rename itself durable.
        fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

fn weights_bytes(vs: &VarStore, path: &Path) -> Result<Vec<u8>, CheckpointError> {
    let mut bytes = Vec::new();
    vs.save_to_stream(&mut bytes).map_err(|source| CheckpointError::Weights { path: path.into(), source })?;
    Ok(bytes)
}

/// A checkpoint as bytes (the file's layout): `meta`, `online`'s weights and, when given,
/// `target`'s (an empty section otherwise: what a serving replica needs is the online network).
/// `origin` names it in errors. The same bytes are the blob a learner publishes on the weights
/// topic (`protocol::weights`).
pub fn encode(
    meta: &Meta,
    online: &VarStore,
    target: Option<&VarStore>,
    origin: &Path,
) -> Result<Vec<u8>, CheckpointError> {
    let json = serde_json::to_vec(meta)
        .map_err(|e| CheckpointError::Corrupt { path: origin.into(), reason: e.to_string() })?;
    let online = weights_bytes(online, origin)?;
    let target = match target {
        Some(t) => weights_bytes(t, origin)?,
        None => Vec::new(),
    };
    let mut out = Vec::with_capacity(MAGIC.len() + 24 + json.len() + online.len() + target.len());
    out.extend_from_slice(MAGIC);
    for section in [&json, &online, &target] {
        out.extend_from_slice(&(section.len() as u64).to_le_bytes());
        out.extend_from_slice(section);
    }
    Ok(out)
}

/// Writes a checkpoint of `online` and `target` with `meta` to `path`, atomically.
pub fn save(path: &Path, meta: &Meta, online: &VarStore, target: &VarStore) -> Result<(), CheckpointError> {
    let bytes = encode(meta, online, Some(target), path)?;
    write_atomic(path, |out| out.write_all(&bytes)).map_err(|source| CheckpointError::Io { path: path.into(), source })
}

/// Reads the checkpoint at `path`; `Ok(None)` when there is none.
pub fn load(path: &Path) -> Result<Option<Checkpoint>, CheckpointError> {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(CheckpointError::Io { path: path.into(), source }),
    };
    decode(&bytes, path).map(Some)
}

/// A checkpoint from its bytes ([`encode`]); `origin` names it in errors.
pub fn decode(bytes: &[u8], origin: &Path) -> Result<Checkpoint, CheckpointError> {
    let corrupt = |reason: &str| CheckpointError::Corrupt { path: origin.into(), reason: reason.into() };
    let mut rest = bytes.strip_prefix(MAGIC.as_slice()).ok_or_else(|| corrupt("bad magic"))?;
    let mut sections: Vec<&[u8]> = Vec::with_capacity(3);
    for _ in 0..3 {
        let (len, tail) = rest.split_first_chunk::<8>().ok_or_else(|| corrupt("truncated"))?;
        let len = usize::try_from(u64::from_le_bytes(*len)).map_err(|_| corrupt("section too long"))?;
        if tail.len() < len {
            return Err(corrupt("truncated"));
        }
        let (section, tail) = tail.split_at(len);
        sections.push(section);
        rest = tail;
    }
    let [meta, online, target] = sections[..] else { return Err(corrupt("truncated")) };
    let meta: Meta = serde_json::from_slice(meta).map_err(|e| corrupt(&e.to_string()))?;
    if meta.format != FORMAT {
        return Err(corrupt(&format!("layout version {} (this build reads {FORMAT})", meta.format)));
    }
    Ok(Checkpoint { path: origin.into(), meta, online: online.to_vec(), target: target.to_vec() })
}

impl Checkpoint {
    /// Refuses a checkpoint of another network shape, or (once known) another action count.
    pub fn check(&self, net: &NetConfig, n_actions: Option<i64>) -> Result<(), CheckpointError> {
        if &self.meta.net != net {
            let show = |c: &NetConfig| serde_json::to_string(c).unwrap_or_default();
            return Err(CheckpointError::NetMismatch {
                path: self.path.clone(),
                found: show(&self.meta.net),
                wanted: show(net),
            });
        }
        match n_actions {
            Some(wanted) if wanted != self.meta.n_actions => {
                Err(CheckpointError::ActionsMismatch { path: self.path.clone(), found: self.meta.n_actions, wanted })
            }
            _ => Ok(()),
        }
    }

    /// Refuses a checkpoint trained on another catalogue than the states' (`None` on either
    /// side counts as a catalogue of its own: it cannot be shown to be the same).
    pub fn check_catalog(&self, catalog: Option<&str>) -> Result<(), CheckpointError> {
        if self.meta.catalog.as_deref() == catalog {
            return Ok(());
        }
        let show = |c: Option<&str>, none: &str| c.map_or_else(|| none.to_string(), str::to_string);
        Err(CheckpointError::CatalogMismatch {
            path: self.path.clone(),
            found: show(self.meta.catalog.as_deref(), "(none recorded)"),
            wanted: show(catalog, "(none sent)"),
        })
    }

    /// Renames the file to `<name>.replaced-<saved_at_ms>` beside it, so that a fresh start
    /// never overwrites it; returns the new path.
    pub fn set_aside(&self) -> Result<PathBuf, CheckpointError> {
        let name = self.path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let aside = self.path.with_file_name(format!("{name}.replaced-{}", self.meta.saved_at_ms));
        fs::rename(&self.path, &aside).map_err(|source| CheckpointError::Io { path: self.path.clone(), source })?;
        Ok(aside)
    }

    /// Loads the online weights into `online` and, when given, the target weights into `target`.
    pub fn load_into(&self, online: &mut VarStore, target: Option<&mut VarStore>) -> Result<(), CheckpointError> {
        let err = |source| CheckpointError::Weights { path: self.path.clone(), source };
        online.load_from_stream(io::Cursor::new(&self.online)).map_err(err)?;
        if let Some(target) = target {
            if self.target.is_empty() {
                return Err(CheckpointError::Corrupt {
                    path: self.path.clone(),
                    reason: "it holds no target weights (a serving copy)".into(),
                });
            }
            target.load_from_stream(io::Cursor::new(&self.target)).map_err(err)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policies::dqn::net::{batch_ids, Net, NetKind};
    use tch::Device;

    fn meta(cfg: &NetConfig) -> Meta {
        Meta {
            wide_pairs: Vec::new(),
            items: vec![vec![2, 3], Vec::new()],
            format: FORMAT,
            net: cfg.clone(),
            n_actions: 7,
            catalog: Some("c0ffee".into()),
            updates: 42,
            eps_step: 99,
            vocab: vec!["red".into(), "blue".into()],
            saved_at_ms: 1,
        }
    }

    #[test]
    fn round_trips_weights_and_meta() {
        let _rng = crate::policies::dqn::net::torch_rng_guard();
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = file_in(dir.path());
        let cfg = NetConfig::paper(20, 6);
        let (online, target) = (VarStore::new(Device::Cpu), VarStore::new(Device::Cpu));
        let net = Net::new(&online.root(), &cfg, 7);
        let _t = Net::new(&target.root(), &cfg, 7);
        save(&path, &meta(&cfg), &online, &target).unwrap_or_else(|e| panic!("{e}"));
        let ckpt = load(&path).unwrap_or_else(|e| panic!("{e}")).unwrap_or_else(|| panic!("no checkpoint"));
        assert_eq!(ckpt.meta, meta(&cfg));
        let (mut online2, mut target2) = (VarStore::new(Device::Cpu), VarStore::new(Device::Cpu));
        let net2 = Net::new(&online2.root(), &cfg, 7);
        let target_net2 = Net::new(&target2.root(), &cfg, 7);
        let x = batch_ids(&[&[2, 3, 4], &[5]], Device::Cpu);
        assert!(!net.forward(&x, None).allclose(&net2.forward(&x, None), 1e-6, 1e-6, false));
        ckpt.load_into(&mut online2, Some(&mut target2)).unwrap_or_else(|e| panic!("{e}"));
        assert!(net.forward(&x, None).equal(&net2.forward(&x, None)), "same Q-values on the same input");
        assert!(_t.forward(&x, None).equal(&target_net2.forward(&x, None)));
        assert!(load(&dir.path().join("none")).unwrap_or_else(|e| panic!("{e}")).is_none());
    }

    #[test]
    fn the_bytes_without_target_serve_the_online_network_and_damage_is_named() {
        let _rng = crate::policies::dqn::net::torch_rng_guard();
        let cfg = NetConfig::paper(20, 6);
        let online = VarStore::new(Device::Cpu);
        let net = Net::new(&online.root(), &cfg, 7);
        let origin = Path::new("weights version 3");
        let bytes = encode(&meta(&cfg), &online, None, origin).unwrap_or_else(|e| panic!("{e}"));
        let ckpt = decode(&bytes, origin).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(ckpt.meta, meta(&cfg));
        let (mut copy, mut target) = (VarStore::new(Device::Cpu), VarStore::new(Device::Cpu));
        let (served, _) = (Net::new(&copy.root(), &cfg, 7), Net::new(&target.root(), &cfg, 7));
        let e = ckpt.load_into(&mut copy, Some(&mut target)).err().map(|e| e.to_string());
        assert!(e.as_deref().is_some_and(|e| e.contains("no target weights")), "{e:?}");
        ckpt.load_into(&mut copy, None).unwrap_or_else(|e| panic!("{e}"));
        let x = batch_ids(&[&[2, 3, 4], &[5]], Device::Cpu);
        assert!(net.forward(&x, None).equal(&served.forward(&x, None)), "same Q-values on the same input");
        // Cut anywhere, the bytes are refused with the reason and where they came from.
        for cut in [20, 40, bytes.len() - 1] {
            let e = decode(&bytes[..cut], origin).err().map(|e| e.to_string());
            assert!(e.as_deref().is_some_and(|e| e.contains("weights version 3") && e.contains("truncated")), "{e:?}");
        }
    }

    #[test]
    fn refuses_another_network_or_action_space() {
        let _rng = crate::policies::dqn::net::torch_rng_guard();
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = file_in(dir.path());
        let cfg = NetConfig { kind: NetKind::Mlp, ..NetConfig::paper(20, 6) };
        let (online, target) = (VarStore::new(Device::Cpu), VarStore::new(Device::Cpu));
        let (_a, _b) = (Net::new(&online.root(), &cfg, 7), Net::new(&target.root(), &cfg, 7));
        save(&path, &meta(&cfg), &online, &target).unwrap_or_else(|e| panic!("{e}"));
        let ckpt = load(&path).unwrap_or_else(|e| panic!("{e}")).unwrap_or_else(|| panic!("no checkpoint"));
        assert!(ckpt.check(&cfg, Some(7)).is_ok());
        let other = NetConfig { hidden: vec![16], ..cfg.clone() };
        let e = ckpt.check(&other, None).err().unwrap_or_else(|| panic!("accepted another net"));
        assert!(e.to_string().contains("another network"), "{e}");
        let e = ckpt.check(&cfg, Some(8)).err().unwrap_or_else(|| panic!("accepted another action count"));
        assert!(e.to_string().contains("trained for 7 actions but the states announce 8"), "{e}");
        assert!(ckpt.check_catalog(Some("c0ffee")).is_ok());
        let e = ckpt.check_catalog(Some("beef")).err().unwrap_or_else(|| panic!("accepted another catalogue"));
        assert!(e.to_string().contains("catalogue c0ffee but the states come from catalogue beef"), "{e}");
        let e = ckpt.check_catalog(None).err().unwrap_or_else(|| panic!("accepted states without a catalogue"));
        assert!(e.to_string().contains("(none sent)"), "{e}");
        let aside = ckpt.set_aside().unwrap_or_else(|e| panic!("{e}"));
        assert!(aside.exists() && !path.exists(), "set aside, not removed: {}", aside.display());
        assert!(aside.to_string_lossy().ends_with("dqn.ckpt.replaced-1"), "{}", aside.display());
        fs::rename(&aside, &path).unwrap_or_else(|e| panic!("{e}"));
        fs::write(&path, b"garbage").unwrap_or_else(|e| panic!("{e}"));
        let e = load(&path).err().unwrap_or_else(|| panic!("loaded garbage"));
        assert!(matches!(e, CheckpointError::Corrupt { .. }), "{e}");
    }

    #[test]
    fn host_placeholders_give_each_replica_its_folder() {
        assert_eq!(expand_dir(Path::new("/checkpoints/{host}"), "3f2a9c"), Path::new("/checkpoints/3f2a9c"));
        assert_eq!(expand_dir(Path::new("/ckpt/{host}-{host}"), "a"), Path::new("/ckpt/a-a"));
        assert_eq!(expand_dir(Path::new("target/sim"), "a"), Path::new("target/sim"), "no placeholder: as given");
    }

    #[test]
    fn writes_through_a_temporary_file_then_renames() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("f.bin");
        write_atomic(&path, |w| w.write_all(b"first")).unwrap_or_else(|e| panic!("{e}"));
        let failed = write_atomic(&path, |w| {
            w.write_all(b"half of the seco")?;
            w.flush()?;
            // Mid-write: the temporary file exists beside the untouched old one.
            let names: Vec<String> =
                fs::read_dir(dir.path())?.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
            assert!(names.iter().any(|n| n.starts_with(".f.bin.") && n.ends_with(".partial")), "{names:?}");
            assert_eq!(fs::read(&path)?, b"first");
            Err(io::Error::other("disk full"))
        });
        assert!(failed.is_err());
        assert_eq!(fs::read(&path).unwrap_or_else(|e| panic!("{e}")), b"first", "old file intact");
        write_atomic(&path, |w| w.write_all(b"second")).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(fs::read(&path).unwrap_or_else(|e| panic!("{e}")), b"second");
        let left = fs::read_dir(dir.path()).unwrap_or_else(|e| panic!("{e}")).count();
        assert_eq!(left, 1, "no temporary file left behind");
    }
}
