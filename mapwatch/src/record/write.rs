//! Writes a record file block by block (format.rs). Pure I/O on any `Write`: the
//! capture task decides when a block ends.
use std::io::Write;

use foldhash::{HashMap, HashMapExt as _};

use super::format::{Entry, FORMAT_VERSION, Header, MAGIC, NameId, SiteId, Summary};

#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("writing the record file: {0}")]
    Io(#[from] std::io::Error),
    #[error("encoding a record block: {0}")]
    Encode(#[from] postcard::Error),
    #[error("encoding the record header: {0}")]
    Header(#[from] serde_json::Error),
}

pub struct RecordWriter<W: Write> {
    out: W,
    names: HashMap<String, NameId>,
    sites: HashMap<(NameId, NameId, u32), SiteId>,
    pending: Vec<Entry>,
    blocks: u64,
    bytes: u64,
}

impl<W: Write> RecordWriter<W> {
    /// Writes the magic, the version and the header.
    pub fn create(mut out: W, header: &Header) -> Result<RecordWriter<W>, WriteError> {
        let header = serde_json::to_vec(header)?;
        out.write_all(MAGIC)?;
        out.write_all(&FORMAT_VERSION.to_le_bytes())?;
        out.write_all(&(header.len() as u32).to_le_bytes())?;
        out.write_all(&header)?;
        out.flush()?;
        Ok(RecordWriter {
            out,
            names: HashMap::new(),
            sites: HashMap::new(),
            pending: Vec::new(),
            blocks: 0,
            bytes: (MAGIC.len() + 6 + header.len()) as u64,
        })
    }

    /// The id of `text`, defining it in the current block the first time.
    pub fn name(&mut self, text: &str) -> NameId {
        if text.is_empty() {
            return 0;
        }
        if let Some(&id) = self.names.get(text) {
            return id;
        }
        let id = self.names.len() as NameId + 1;
        self.names.insert(text.to_string(), id);
        self.pending.push(Entry::Name {
            id,
            text: text.to_string(),
        });
        id
    }

    /// The id of a source line, defining it (and its names) the first time.
    pub fn site(&mut self, function: &str, file: &str, line: u32) -> SiteId {
        let (function, file) = (self.name(function), self.name(file));
        if let Some(&id) = self.sites.get(&(function, file, line)) {
            return id;
        }
        let id = self.sites.len() as SiteId + 1;
        self.sites.insert((function, file, line), id);
        self.pending.push(Entry::Site {
            id,
            function,
            file,
            line,
        });
        id
    }

    pub fn push(&mut self, entry: Entry) {
        self.pending.push(entry);
    }

    /// Entries waiting for the next block.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Bytes written so far.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Writes the pending entries as one block and flushes it to the file.
    pub fn write_block(&mut self) -> Result<(), WriteError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let encoded = postcard::to_stdvec(&self.pending)?;
        let mut compressor =
            flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::fast());
        compressor.write_all(&encoded)?;
        let body = compressor.finish()?;
        self.out.write_all(&(body.len() as u32).to_le_bytes())?;
        self.out.write_all(&crc32fast::hash(&body).to_le_bytes())?;
        self.out.write_all(&body)?;
        self.out.flush()?;
        self.pending.clear();
        self.blocks += 1;
        self.bytes += 8 + body.len() as u64;
        Ok(())
    }

    /// Writes what is pending and the summary as the last block.
    pub fn finish(mut self, summary: Summary) -> Result<W, WriteError> {
        self.pending.push(Entry::End(summary));
        self.write_block()?;
        Ok(self.out)
    }
}
