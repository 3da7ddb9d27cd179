//! Section writer and reader (lengths, CRC32 checksums) and the PAGES and END payloads.

use super::*;
use crate::error::ImageError;
use std::io::{self, Read, Write};

/// Writes the stream: header, then sections.
pub(crate) struct SectionWriter<W: Write> {
    pub w: W,
    pub bytes: u64,
}

impl<W: Write> SectionWriter<W> {
    pub fn new(mut w: W) -> io::Result<Self> {
        w.write_all(MAGIC)?;
        w.write_all(&VERSION.to_le_bytes())?;
        Ok(SectionWriter { w, bytes: 12 })
    }
    /// One section whose payload is the concatenation of `parts`.
    pub fn section(&mut self, tag: u32, parts: &[&[u8]]) -> io::Result<()> {
        let len: u64 = parts.iter().map(|p| p.len() as u64).sum();
        let mut head = [0u8; 12];
        head[..4].copy_from_slice(&tag.to_le_bytes());
        head[4..].copy_from_slice(&len.to_le_bytes());
        let mut h = crc32fast::Hasher::new();
        h.update(&head);
        self.w.write_all(&head)?;
        for p in parts {
            h.update(p);
            self.w.write_all(p)?;
        }
        self.w.write_all(&h.finalize().to_le_bytes())?;
        self.bytes += len + 16;
        Ok(())
    }
}

/// Reads the stream section by section, checking lengths and checksums.
pub(crate) struct SectionReader<R: Read> {
    r: R,
    pub bytes: u64,
    /// The format version of the stream (1 or 2): how its process section is encoded.
    pub version: u32,
}

fn read_full<R: Read>(r: &mut R, buf: &mut [u8], what: &'static str) -> Result<(), crate::Error> {
    match r.read_exact(buf) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
            Err(ImageError::Truncated(what).into())
        }
        Err(e) => Err(crate::Error::Stream(e)),
    }
}

pub(crate) fn section_name(tag: u32) -> &'static str {
    match tag {
        TAG_PROCESS => "process",
        TAG_PAGES => "pages",
        TAG_END => "end",
        _ => "unknown",
    }
}

impl<R: Read> SectionReader<R> {
    pub fn new(mut r: R) -> Result<Self, crate::Error> {
        let mut head = [0u8; 12];
        read_full(&mut r, &mut head, "the header")?;
        if &head[..8] != MAGIC {
            return Err(ImageError::BadMagic.into());
        }
        let v = u32::from_le_bytes(head[8..].try_into().unwrap());
        if !(1..=VERSION).contains(&v) {
            return Err(ImageError::WrongVersion {
                found: v,
                supported: VERSION,
            }
            .into());
        }
        Ok(SectionReader {
            r,
            bytes: 12,
            version: v,
        })
    }

    /// Reads the next section into `buf` (resized to the payload length) and returns its tag.
    pub fn next(&mut self, buf: &mut Vec<u8>) -> Result<u32, crate::Error> {
        let mut head = [0u8; 12];
        read_full(&mut self.r, &mut head, "a section header")?;
        let tag = u32::from_le_bytes(head[..4].try_into().unwrap());
        let len = u64::from_le_bytes(head[4..].try_into().unwrap());
        let max = match tag {
            TAG_PROCESS => MAX_META,
            TAG_PAGES => MAX_PAGES_SECTION + 16 * 1024 + 4,
            TAG_END => 16,
            _ => return Err(ImageError::Corrupt(format!("unknown section tag {tag}")).into()),
        };
        if len > max {
            return Err(ImageError::Corrupt(format!(
                "{} section claims {len} bytes",
                section_name(tag)
            ))
            .into());
        }
        let name = section_name(tag);
        if buf.len() < len as usize {
            buf.resize(len as usize, 0);
        } else {
            buf.truncate(len as usize);
        }
        read_full(&mut self.r, buf, name)?;
        let mut crc = [0u8; 4];
        read_full(&mut self.r, &mut crc, name)?;
        let mut h = crc32fast::Hasher::new();
        h.update(&head);
        h.update(buf);
        if h.finalize() != u32::from_le_bytes(crc) {
            return Err(ImageError::Checksum(name).into());
        }
        self.bytes += len + 16;
        Ok(tag)
    }
}

/// Rewrites a current image as image format version 1 (the process section in the old
/// encoding; page data unchanged). For tests that prove version-1 images still thaw: a real
/// process frozen now, its image made version 1. Refuses state version 1 cannot hold.
#[doc(hidden)]
pub fn rewrite_as_v1<R: Read, W: Write>(input: R, out: W) -> Result<(), crate::Error> {
    let mut sr = SectionReader::new(input)?;
    let mut buf = Vec::new();
    if sr.next(&mut buf)? != TAG_PROCESS {
        return Err(ImageError::Corrupt("first section is not the process section".into()).into());
    }
    let p = ProcessImage::decode_version(&buf, sr.version)?;
    let mut w = out;
    let io = crate::Error::Stream;
    w.write_all(MAGIC).map_err(io)?;
    w.write_all(&1u32.to_le_bytes()).map_err(io)?;
    let mut sw = SectionWriter { w, bytes: 12 };
    sw.section(TAG_PROCESS, &[&p.encode_v1()?]).map_err(io)?;
    loop {
        let tag = sr.next(&mut buf)?;
        sw.section(tag, &[&buf]).map_err(io)?;
        if tag == TAG_END {
            return Ok(());
        }
    }
}

/// (address, length) runs of a PAGES section.
pub(crate) type Runs = Vec<(u64, u64)>;

/// Reads the PAGES sections up to and including the END section, handing each section's
/// runs and the data behind them to `each`, and checks that END counts what was read.
/// Returns the bytes of page data read.
pub(crate) fn read_pages<R: Read>(
    sr: &mut SectionReader<R>,
    buf: &mut Vec<u8>,
    mut each: impl FnMut(&Runs, &[u8]) -> Result<(), crate::Error>,
) -> Result<u64, crate::Error> {
    let (mut total, mut sections) = (0u64, 0u64);
    loop {
        match sr.next(buf)? {
            TAG_PAGES => {
                let (runs, data) = parse_pages(buf)?;
                each(&runs, data)?;
                total += data.len() as u64;
                sections += 1;
            }
            TAG_END => {
                let (t, s) = decode_end(buf)?;
                if t != total || s != sections {
                    return Err(ImageError::Corrupt(
                        "end section does not match the page data".into(),
                    )
                    .into());
                }
                return Ok(total);
            }
            _ => {
                return Err(
                    ImageError::Corrupt("unexpected section among the page data".into()).into(),
                );
            }
        }
    }
}

/// Parses a PAGES payload into its runs and the data behind them.
pub(crate) fn parse_pages(buf: &[u8]) -> Result<(Runs, &[u8]), ImageError> {
    let bad = |w: &str| ImageError::Corrupt(format!("pages section: {w}"));
    if buf.len() < 4 {
        return Err(bad("too short"));
    }
    let n = u32::from_le_bytes(buf[..4].try_into().unwrap()) as usize;
    if n > 1024 || buf.len() < 4 + n * 16 {
        return Err(bad("bad run count"));
    }
    let mut runs = Vec::with_capacity(n);
    let mut total = 0u64;
    for i in 0..n {
        let o = 4 + i * 16;
        let a = u64::from_le_bytes(buf[o..o + 8].try_into().unwrap());
        let l = u64::from_le_bytes(buf[o + 8..o + 16].try_into().unwrap());
        if a % PAGE != 0 || l % PAGE != 0 || l == 0 || a.checked_add(l).is_none() {
            return Err(bad("unaligned run"));
        }
        total += l;
        runs.push((a, l));
    }
    let data = &buf[4 + n * 16..];
    if data.len() as u64 != total {
        return Err(bad("data length does not match its runs"));
    }
    Ok((runs, data))
}

pub(crate) fn decode_end(buf: &[u8]) -> Result<(u64, u64), ImageError> {
    if buf.len() != 16 {
        return Err(ImageError::Corrupt("bad end section".into()));
    }
    Ok((
        u64::from_le_bytes(buf[..8].try_into().unwrap()),
        u64::from_le_bytes(buf[8..].try_into().unwrap()),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_round_trips_and_detects_damage() {
        let mut out = Vec::new();
        let mut w = SectionWriter::new(&mut out).unwrap();
        w.section(TAG_PROCESS, &[b"abc"]).unwrap();
        w.section(TAG_END, &[&[0u8; 16]]).unwrap();
        let mut r = SectionReader::new(&out[..]).unwrap();
        let mut buf = Vec::new();
        assert_eq!(r.next(&mut buf).unwrap(), TAG_PROCESS);
        assert_eq!(buf, b"abc");
        assert_eq!(r.next(&mut buf).unwrap(), TAG_END);
        out[25] ^= 1;
        let mut r = SectionReader::new(&out[..]).unwrap();
        assert!(matches!(
            r.next(&mut buf),
            Err(crate::Error::Image(ImageError::Checksum(_)))
        ));
    }
}
