//! The streaming object writer: an object being received, in memory while it is small, in a
//! temporary file once it is not.
//!
//! The Part-10 header goes first, then every data fragment at the offset where it belongs,
//! exactly as received. Objects up to the inline limit stay in one buffer that the ingest
//! journal appends as it is (no file, no `open`/`close`, no kernel worker per write); the
//! first fragment that would pass the limit spills the buffer to the temporary file and the
//! rest streams there. The dataset is hashed (BLAKE3) on the way and its first bytes are kept
//! for index-attribute extraction; nothing else is held in memory, whatever the object's size.
//! The dataset's element framing is followed on the way too ([`StreamCheck`]), so an object
//! that ends inside an element or has an odd length is known when its last fragment lands.
//! A write error (disk full) is remembered and the remaining fragments are drained without
//! writing, so the association stays usable and the peer gets a status, not a dropped link.

use std::io;
use std::path::{Path, PathBuf};

use bytes::Bytes;

use crate::dicom::scan::{ScanError, StreamCheck};
use crate::rt::ObjFile;

/// How many leading dataset bytes are kept in memory for attribute extraction; more are read
/// back from the file in the rare case the wanted groups are longer.
pub const PREFIX_LEN: usize = 64 * 1024;

/// The capacity an in-memory object whose first fragment is not its last starts with (it
/// grows as needed). An object that arrives in one fragment (most small ones: the PDU
/// length we announce is larger) gets a buffer of its size instead. Every object holds its
/// buffer until its checkpoint, so at thousands of objects per second the difference
/// between a buffer and its object's size is held thousands of times over: a buffer that
/// ended larger than its object's [size class](super::buffers::class) is swapped for one
/// that fits when the object is complete.
const FIRST_CAPACITY: usize = 32 * 1024;

/// An object being received.
#[derive(Debug)]
pub struct ObjectWriter<F: ObjFile> {
    file: Option<F>,
    /// The whole object (header and dataset) while it is at most `inline_max` bytes.
    mem: Option<Vec<u8>>,
    inline_max: usize,
    temp_path: PathBuf,
    pos: u64,
    header_len: u64,
    hasher: blake3::Hasher,
    prefix: Vec<u8>,
    check: Option<StreamCheck>,
    error: Option<io::Error>,
}

/// Where a received object's bytes are.
#[derive(Debug)]
pub enum Body {
    /// All of it (Part-10 header and dataset) in memory.
    Inline(Bytes),
    /// In this temporary file (not yet synced or renamed).
    File(PathBuf),
}

impl Body {
    /// Drops the object: removes its temporary file, if it has one.
    pub fn discard(&self) {
        if let Body::File(p) = self {
            remove_quietly(p);
        }
    }
}

/// An object whose bytes have all arrived.
#[derive(Debug)]
pub struct WrittenObject {
    /// Its bytes.
    pub body: Body,
    /// Size of the whole file.
    pub file_size: u64,
    /// Offset of the dataset in the file (header length).
    pub dataset_offset: u64,
    /// Size of the dataset bytes.
    pub dataset_size: u64,
    /// BLAKE3 of the dataset bytes, hex.
    pub dataset_blake3: String,
    /// The first [`PREFIX_LEN`] bytes of the dataset (or all of it).
    pub prefix: Bytes,
    /// What the structure check found (`Ok` also when the syntax is not one it knows).
    pub structure: Result<(), ScanError>,
}

impl<F: ObjFile> ObjectWriter<F> {
    /// Starts an object with its Part-10 header: in memory if `inline_max` leaves room for
    /// more than the header, else in the temporary file `temp_path` (created now). `check`
    /// follows the dataset's structure as it arrives (`None`: not checked).
    pub async fn create(
        temp_path: PathBuf,
        header: Vec<u8>,
        check: Option<StreamCheck>,
        inline_max: usize,
    ) -> io::Result<Self> {
        let header_len = header.len() as u64;
        if header.len() < inline_max {
            // The header alone until the first fragment says how large a buffer to take.
            return Ok(Self {
                file: None,
                mem: Some(header),
                inline_max,
                temp_path,
                pos: header_len,
                header_len,
                hasher: blake3::Hasher::new(),
                prefix: Vec::new(),
                check,
                error: None,
            });
        }
        let file = F::create(&temp_path).await?;
        let mut w = Self {
            file: None,
            mem: None,
            inline_max,
            temp_path,
            pos: 0,
            header_len,
            hasher: blake3::Hasher::new(),
            prefix: Vec::new(),
            check,
            error: None,
        };
        if let Err(e) = file.write_all_at(Bytes::from(header), 0).await {
            let _ = file.close().await;
            remove_quietly(&w.temp_path);
            return Err(e);
        }
        w.file = Some(file);
        w.pos = header_len;
        Ok(w)
    }

    /// Appends one dataset fragment (`last`: the object's last one). After a write error the
    /// fragment is only counted.
    pub async fn write(&mut self, data: Bytes, last: bool) {
        if self.error.is_some() {
            return;
        }
        if let Some(mem) = &mut self.mem {
            if mem.len() + data.len() <= self.inline_max {
                if self.pos == self.header_len && (last || !data.is_empty()) {
                    // The first fragment: the buffer the object is held in until its
                    // checkpoint, of its size when this is all of it.
                    let whole = mem.len() + data.len();
                    let want = if last {
                        whole
                    } else {
                        whole.max(FIRST_CAPACITY).min(self.inline_max)
                    };
                    let mut buf = super::buffers::BufferPool::objects().take(want);
                    buf.extend_from_slice(mem);
                    *mem = buf;
                }
                self.hasher.update(&data);
                if let Some(c) = &mut self.check {
                    c.push(&data);
                }
                mem.extend_from_slice(&data);
                self.pos += data.len() as u64;
                return;
            }
            // Too big to stay inline: what arrived so far goes to the file first.
            let mem = self.mem.take().expect("checked above");
            let dataset_start = self.header_len as usize;
            self.prefix
                .extend_from_slice(&mem[dataset_start..mem.len().min(dataset_start + PREFIX_LEN)]);
            match F::create(&self.temp_path).await {
                Ok(file) => {
                    let len = mem.len() as u64;
                    if let Err(e) = file.write_all_at(Bytes::from(mem), 0).await {
                        self.error = Some(e);
                    }
                    debug_assert_eq!(len, self.pos);
                    self.file = Some(file);
                }
                Err(e) => {
                    self.error = Some(e);
                    return;
                }
            }
            if self.error.is_some() {
                return;
            }
        }
        let Some(file) = &self.file else { return };
        if self.prefix.len() < PREFIX_LEN {
            let take = (PREFIX_LEN - self.prefix.len()).min(data.len());
            self.prefix.extend_from_slice(&data[..take]);
        }
        self.hasher.update(&data);
        if let Some(c) = &mut self.check {
            c.push(&data);
        }
        let len = data.len() as u64;
        match file.write_all_at(data, self.pos).await {
            Ok(()) => self.pos += len,
            Err(e) => self.error = Some(e),
        }
    }

    /// Whether a write has failed (the object will be refused when its last fragment lands).
    pub fn failed(&self) -> bool {
        self.error.is_some()
    }

    /// Closes the file. On any earlier or closing error the temporary file is removed and the
    /// error returned, so no partial file survives.
    pub async fn finish(mut self) -> io::Result<WrittenObject> {
        if let Some(mut mem) = self.mem.take() {
            if super::buffers::oversized(&mem) {
                // Grew past its size class (several fragments): held until its checkpoint,
                // so copied into one that fits, and the large one serves the next object.
                let pool = super::buffers::BufferPool::objects();
                let mut fit = pool.take(mem.len());
                fit.extend_from_slice(&mem);
                pool.give(std::mem::replace(&mut mem, fit));
            }
            let dataset_start = self.header_len as usize;
            let prefix_end = mem.len().min(dataset_start + PREFIX_LEN);
            let body = Bytes::from(mem);
            return Ok(WrittenObject {
                // A view, not a copy: drop it before the body is done with, so the buffer can
                // go back to the pool (see `store::buffers`).
                prefix: body.slice(dataset_start..prefix_end),
                body: Body::Inline(body),
                file_size: self.pos,
                dataset_offset: self.header_len,
                dataset_size: self.pos - self.header_len,
                dataset_blake3: self.hasher.finalize().to_hex().to_string(),
                structure: self.check.take().map_or(Ok(()), |c| c.finish().map(drop)),
            });
        }
        if self.file.is_none() {
            // Spilling failed before the file existed.
            let e = self
                .error
                .take()
                .unwrap_or_else(|| io::Error::other("no file"));
            remove_quietly(&self.temp_path);
            return Err(e);
        }
        let file = self
            .file
            .take()
            .expect("writer holds its file until finished");
        let closed = file.close().await;
        if let Some(e) = self.error.take().or(closed.err()) {
            remove_quietly(&self.temp_path);
            return Err(e);
        }
        Ok(WrittenObject {
            body: Body::File(std::mem::take(&mut self.temp_path)),
            file_size: self.pos,
            dataset_offset: self.header_len,
            dataset_size: self.pos - self.header_len,
            dataset_blake3: self.hasher.finalize().to_hex().to_string(),
            prefix: Bytes::from(std::mem::take(&mut self.prefix)),
            structure: self.check.take().map_or(Ok(()), |c| c.finish().map(drop)),
        })
    }
}

impl<F: ObjFile> Drop for ObjectWriter<F> {
    /// An abandoned writer (association aborted mid-object) removes its temporary file.
    fn drop(&mut self) {
        if !self.temp_path.as_os_str().is_empty() && self.file.is_some() {
            remove_quietly(&self.temp_path);
        }
    }
}

/// Removes a file, ignoring "not found"; other failures are logged (start-up cleans `tmp/`).
pub fn remove_quietly(path: &Path) {
    if let Err(e) = std::fs::remove_file(path) {
        if e.kind() != io::ErrorKind::NotFound {
            tracing::warn!(path = %path.display(), error = %e, "could not remove temporary file");
        }
    }
}

/// Reads up to `len` dataset bytes of a written object back from its file (used when the
/// in-memory prefix was too short for attribute extraction).
pub fn read_dataset_prefix(obj: &WrittenObject, len: usize) -> io::Result<Vec<u8>> {
    use std::os::unix::fs::FileExt;
    let len = len.min(obj.dataset_size as usize);
    let path = match &obj.body {
        Body::Inline(b) => {
            let start = obj.dataset_offset as usize;
            return Ok(b[start..start + len].to_vec());
        }
        Body::File(p) => p,
    };
    let f = std::fs::File::open(path)?;
    let mut buf = vec![0u8; len];
    f.read_exact_at(&mut buf, obj.dataset_offset)?;
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rt::InlineFile;
    use crate::store::buffers::oversized;

    fn run<T>(f: impl std::future::Future<Output = T>) -> T {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(f)
    }

    /// Receives `fragments` after a 300-byte header; returns whether the buffer could serve a
    /// larger size class than its bytes need, and the bytes held.
    fn receive(fragments: &[usize]) -> (bool, Bytes) {
        let dir = tempfile::tempdir().unwrap();
        run(async {
            let header = vec![7u8; 300];
            let mut w =
                ObjectWriter::<InlineFile>::create(dir.path().join("t"), header, None, 256 * 1024)
                    .await
                    .unwrap();
            for (i, &n) in fragments.iter().enumerate() {
                let last = i + 1 == fragments.len();
                w.write(Bytes::from(vec![i as u8; n]), last).await;
            }
            let obj = w.finish().await.unwrap();
            let Body::Inline(b) = obj.body else {
                panic!("inline")
            };
            drop(obj.prefix);
            let v = Vec::from(b.try_into_mut().expect("one handle"));
            (oversized(&v), Bytes::from(v))
        })
    }

    /// Every in-memory object holds its buffer until its checkpoint, so the buffer must fit
    /// the object (a fixed 32 KiB held a 1 KiB object 30 times over), whether the dataset
    /// came in one fragment or grew over several.
    #[test]
    fn an_object_held_in_memory_is_held_in_a_buffer_of_its_size() {
        for fragments in [
            &[700][..],
            &[16 * 1024],
            &[0, 16 * 1024],
            &[4000, 4000, 4000, 4000],
            &[30 * 1024, 30 * 1024, 30 * 1024],
            &[100 * 1024, 150 * 1024],
        ] {
            let len = 300 + fragments.iter().sum::<usize>();
            let (oversized, held) = receive(fragments);
            assert_eq!(held.len(), len, "{fragments:?}");
            assert_eq!(&held[..300], &[7u8; 300][..]);
            let mut at = 300;
            for (i, &n) in fragments.iter().enumerate() {
                assert!(held[at..at + n].iter().all(|&b| b == i as u8));
                at += n;
            }
            // Its own size class: a fresh buffer of it, or one the pool kept in it (of a
            // capacity up to the next class; other tests share the pool).
            assert!(
                !oversized,
                "{fragments:?}: {len} bytes held in a larger class"
            );
        }
    }
}
