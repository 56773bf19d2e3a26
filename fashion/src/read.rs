//! Streaming, parallel line reader: the calling thread decompresses (gzip detected by its magic
//! bytes `1f 8b`, not by name) and cuts the stream into ~1 MiB batches of whole lines; rayon
//! tasks parse the batches. At most [`IN_FLIGHT`] batches exist at once, so memory stays bounded
//! whatever the file size.
//!
//! Invariant: every line is handed to the parser exactly once, and errors carry the 1-based
//! line number of the line in the file (computed after the fact from each batch's line count).

use std::{
    fs::File,
    io::{self, BufRead, BufReader, Read},
    path::Path,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Condvar, Mutex,
    },
};

use flate2::bufread::MultiGzDecoder;
use indicatif::ProgressBar;

use super::DataError;

/// Target size of a batch of lines.
const CHUNK_BYTES: usize = 1 << 20;
/// Batches read but not yet parsed, at most.
const IN_FLIGHT: usize = 8;
/// Skipped lines reported per file.
pub(crate) const MAX_EXAMPLES: usize = 5;

/// What a file gave: the parsers' batches in file order and the line accounting.
#[derive(Debug)]
pub(crate) struct Lines<B> {
    /// One parser output per batch of lines, in file order.
    pub batches: Vec<B>,
    /// Lines in the file.
    pub lines: u64,
    /// Lines the parser refused (only with `skip_bad`).
    pub bad_lines: u64,
    /// The first refused lines as `file:line: reason`.
    pub examples: Vec<String>,
}

/// Counts compressed bytes into the progress bar.
struct Counting<R> {
    inner: R,
    bar: ProgressBar,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.bar.inc(n as u64);
        Ok(n)
    }
}

/// Opens `path` as a stream of decompressed bytes; gzip is detected by its magic bytes.
pub(crate) fn open(path: &Path, bar: ProgressBar) -> Result<Box<dyn Read + Send>, DataError> {
    let file = File::open(path).map_err(|e| DataError::io(path, e))?;
    let mut reader = BufReader::with_capacity(256 << 10, Counting { inner: file, bar });
    let head = reader.fill_buf().map_err(|e| DataError::io(path, e))?;
    if head.starts_with(&[0x1f, 0x8b]) {
        Ok(Box::new(MultiGzDecoder::new(reader)))
    } else {
        Ok(Box::new(reader))
    }
}

/// Maps a read error of `path` onto truncated / corrupt / other.
pub(crate) fn read_error(path: &Path, e: io::Error) -> DataError {
    match e.kind() {
        io::ErrorKind::UnexpectedEof => DataError::Truncated { path: path.display().to_string() },
        io::ErrorKind::InvalidInput | io::ErrorKind::InvalidData => {
            DataError::Corrupt { path: path.display().to_string(), source: e }
        }
        _ => DataError::io(path, e),
    }
}

/// The first non-blank line of `path` (decompressed), without its line end; empty if none.
pub(crate) fn first_line(path: &Path) -> Result<Vec<u8>, DataError> {
    let mut reader = BufReader::new(open(path, ProgressBar::hidden())?);
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = reader.read_until(b'\n', &mut line).map_err(|e| read_error(path, e))?;
        if n == 0 {
            return Ok(Vec::new());
        }
        let trimmed = trim_line(&line, true);
        if !trimmed.iter().all(u8::is_ascii_whitespace) {
            return Ok(trimmed.to_vec());
        }
    }
}

/// Strips the line end (and a UTF-8 byte-order mark on the first line).
fn trim_line(line: &[u8], first: bool) -> &[u8] {
    let mut line = line.strip_suffix(b"\n").unwrap_or(line);
    line = line.strip_suffix(b"\r").unwrap_or(line);
    if first {
        line = line.strip_prefix(b"\xef\xbb\xbf").unwrap_or(line);
    }
    line
}

/// A batch of whole lines and its position among the batches.
struct Chunk {
    seq: usize,
    bytes: Vec<u8>,
}

/// What a parser task made of a batch.
struct Parsed<B> {
    seq: usize,
    lines: u64,
    batch: B,
    bad: u64,
    /// (line within the batch, 1-based; reason)
    errors: Vec<(u64, String)>,
}

/// Caps the batches in flight: the reader waits while [`IN_FLIGHT`] are unparsed.
#[derive(Default)]
struct Slots {
    used: Mutex<usize>,
    freed: Condvar,
}

impl Slots {
    fn acquire(&self) {
        let mut used = self.used.lock().unwrap_or_else(|p| p.into_inner());
        while *used >= IN_FLIGHT {
            used = self.freed.wait(used).unwrap_or_else(|p| p.into_inner());
        }
        *used += 1;
    }

    fn release(&self) {
        *self.used.lock().unwrap_or_else(|p| p.into_inner()) -= 1;
        self.freed.notify_one();
    }
}

/// Reads `path` and parses every non-blank line with `parse` into per-batch outputs `B`.
/// Without `skip_bad` the first refused line (in file order) fails the read with
/// [`DataError::Malformed`]; with it, refused lines are counted and the first few reported.
pub(crate) fn parse_lines<B, F>(path: &Path, skip_bad: bool, bar: ProgressBar, parse: F) -> Result<Lines<B>, DataError>
where
    B: Default + Send,
    F: Fn(&mut B, &[u8]) -> Result<(), String> + Sync,
{
    let mut source = open(path, bar)?;
    // Lowest batch that holds a refused line (without `skip_bad`): later batches need no parsing,
    // earlier ones must all be parsed to find the first bad line and number it.
    let first_bad = AtomicUsize::new(usize::MAX);
    let slots = Slots::default();
    let results: Mutex<Vec<Parsed<B>>> = Mutex::new(Vec::new());

    let read_result = rayon::in_place_scope(|scope| -> io::Result<()> {
        let mut carry: Vec<u8> = Vec::new();
        let mut seq = 0;
        loop {
            if first_bad.load(Ordering::Relaxed) != usize::MAX {
                return Ok(());
            }
            let mut buf = Vec::with_capacity(CHUNK_BYTES + carry.len());
            buf.append(&mut carry);
            // A full batch beyond the carried partial line, so a very long line costs linear time.
            let want = CHUNK_BYTES;
            let got = (&mut source).take(want as u64).read_to_end(&mut buf)?;
            let eof = got < want;
            let bytes = if eof {
                buf
            } else {
                match memchr::memrchr(b'\n', &buf) {
                    Some(i) => {
                        carry.extend_from_slice(&buf[i + 1..]);
                        buf.truncate(i + 1);
                        buf
                    }
                    // A line longer than a batch: keep reading until it ends.
                    None => {
                        carry = buf;
                        continue;
                    }
                }
            };
            if !bytes.is_empty() {
                slots.acquire();
                let chunk = Chunk { seq, bytes };
                seq += 1;
                let (parse, first_bad, slots, results) = (&parse, &first_bad, &slots, &results);
                scope.spawn(move |_| {
                    let parsed = parse_chunk(chunk, parse, skip_bad, first_bad);
                    results.lock().unwrap_or_else(|p| p.into_inner()).push(parsed);
                    slots.release();
                });
            }
            if eof {
                return Ok(());
            }
        }
    });
    read_result.map_err(|e| read_error(path, e))?;

    let mut parsed = results.into_inner().unwrap_or_else(|p| p.into_inner());
    parsed.sort_unstable_by_key(|p| p.seq);
    let mut out = Lines { batches: Vec::with_capacity(parsed.len()), lines: 0, bad_lines: 0, examples: Vec::new() };
    for p in parsed {
        for (local, reason) in p.errors {
            let line = out.lines + local;
            if !skip_bad {
                return Err(DataError::Malformed { file: path.display().to_string(), line, reason });
            }
            if out.examples.len() < MAX_EXAMPLES {
                out.examples.push(format!("{}:{line}: {reason}", path.display()));
            }
        }
        out.lines += p.lines;
        out.bad_lines += p.bad;
        out.batches.push(p.batch);
    }
    Ok(out)
}

fn parse_chunk<B, F>(chunk: Chunk, parse: &F, skip_bad: bool, first_bad: &AtomicUsize) -> Parsed<B>
where
    B: Default,
    F: Fn(&mut B, &[u8]) -> Result<(), String>,
{
    let mut out = Parsed { seq: chunk.seq, lines: 0, batch: B::default(), bad: 0, errors: Vec::new() };
    if chunk.seq > first_bad.load(Ordering::Relaxed) {
        // A line before this batch already failed the read; its result is not needed.
        return out;
    }
    let bytes = chunk.bytes.as_slice();
    let mut start = 0;
    while start < bytes.len() {
        let end = memchr::memchr(b'\n', &bytes[start..]).map_or(bytes.len(), |i| start + i);
        let line = trim_line(&bytes[start..end], chunk.seq == 0 && start == 0);
        start = end + 1;
        out.lines += 1;
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        if let Err(reason) = parse(&mut out.batch, line) {
            out.bad += 1;
            if out.errors.len() < MAX_EXAMPLES {
                out.errors.push((out.lines, reason));
            }
            if !skip_bad {
                first_bad.fetch_min(chunk.seq, Ordering::Relaxed);
                break;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use flate2::{write::GzEncoder, Compression};

    use super::*;

    /// Collects the lines it is given, refusing those that start with `!`.
    fn collect(batch: &mut Vec<String>, line: &[u8]) -> Result<(), String> {
        let s = std::str::from_utf8(line).map_err(|e| e.to_string())?;
        if s.starts_with('!') {
            return Err("bang".into());
        }
        batch.push(s.to_string());
        Ok(())
    }

    fn write(dir: &Path, name: &str, bytes: &[u8], gzip: bool) -> std::path::PathBuf {
        let path = dir.join(name);
        let data = if gzip {
            let mut enc = GzEncoder::new(Vec::new(), Compression::fast());
            enc.write_all(bytes).unwrap_or_else(|e| panic!("{e}"));
            enc.finish().unwrap_or_else(|e| panic!("{e}"))
        } else {
            bytes.to_vec()
        };
        std::fs::write(&path, data).unwrap_or_else(|e| panic!("{e}"));
        path
    }

    fn big_text(n: usize) -> String {
        // Lines of varying length, some longer than a batch, and blank lines.
        let mut s = String::new();
        for i in 0..n {
            match (i % 1000, i % 10_000) {
                (7, _) => s.push('\n'),
                (_, 500) => s.push_str(&format!("{}\n", "x".repeat(3 * CHUNK_BYTES + 17))),
                _ => s.push_str(&format!("line {i} {}\n", "y".repeat(i % 300))),
            }
        }
        s
    }

    #[test]
    fn every_line_once_in_order_gzip_or_plain() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let text = big_text(20_000);
        for gzip in [false, true] {
            // The name lies about the compression: detection is by content.
            let path = write(dir.path(), "reviews.json.gz", text.as_bytes(), gzip);
            let out = parse_lines(&path, false, ProgressBar::hidden(), collect).unwrap_or_else(|e| panic!("{e}"));
            let got: Vec<String> = out.batches.into_iter().flatten().collect();
            let want: Vec<&str> = text.lines().filter(|l| !l.is_empty()).collect();
            assert_eq!(got, want);
            assert_eq!(out.lines, 20_000);
        }
    }

    #[test]
    fn first_bad_line_is_named_with_its_number() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let mut text = big_text(30_000);
        let lines: Vec<&str> = text.lines().collect();
        let mut edited: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
        edited[12_344] = "!bad".into();
        edited[25_000] = "!bad too".into();
        text = edited.join("\r\n");
        let path = write(dir.path(), "AMAZON_FASHION.json.gz", text.as_bytes(), true);
        let err = parse_lines(&path, false, ProgressBar::hidden(), collect).err();
        let msg = err.map(|e| e.to_string()).unwrap_or_default();
        assert_eq!(msg, format!("{}:12345: bang", path.display()));

        let out = parse_lines(&path, true, ProgressBar::hidden(), collect).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(out.bad_lines, 2);
        assert_eq!(
            out.examples,
            vec![format!("{}:12345: bang", path.display()), format!("{}:25001: bang", path.display())]
        );
        assert_eq!(out.batches.iter().map(Vec::len).sum::<usize>(), 30_000 - 30 - 2);
    }

    #[test]
    fn truncated_gzip_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = write(dir.path(), "full.gz", big_text(5_000).as_bytes(), true);
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{e}"));
        let cut = dir.path().join("AMAZON_FASHION.json.gz");
        std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap_or_else(|e| panic!("{e}"));
        match parse_lines(&cut, true, ProgressBar::hidden(), collect) {
            Err(e @ DataError::Truncated { .. }) => {
                assert_eq!(e.to_string(), format!("{}: gzip stream is truncated", cut.display()))
            }
            other => panic!("expected a truncation error, got {other:?}"),
        }
        // Only the trailer missing is a truncation too.
        std::fs::write(&cut, &bytes[..bytes.len() - 4]).unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(parse_lines(&cut, true, ProgressBar::hidden(), collect), Err(DataError::Truncated { .. })));
    }

    #[test]
    fn first_line_skips_blank_lines_and_bom() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = write(dir.path(), "a", b"\xef\xbb\xbf{\"a\": 1}\r\nrest\n", true);
        assert_eq!(first_line(&path).unwrap_or_else(|e| panic!("{e}")), b"{\"a\": 1}");
        let path = write(dir.path(), "b", b"\n  \n{\"b\": 2}", false);
        assert_eq!(first_line(&path).unwrap_or_else(|e| panic!("{e}")), b"{\"b\": 2}");
        let path = write(dir.path(), "c", b"", false);
        assert!(first_line(&path).unwrap_or_else(|e| panic!("{e}")).is_empty());
    }
}
