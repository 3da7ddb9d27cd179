//! Phase 3 in two steps, so the image can stream while the process is read: [`Seized::plan`]
//! decides what the image holds and how long it is (no page read yet), [`Seized::stream_plan`]
//! reads the pages and writes the image to any `Write` (a socket, a bounded channel), with
//! a 64 KiB buffer and one 512 KiB page buffer: the caller bounds the memory it takes.

use super::memory::{PagePlan, plan_pages, write_plan};
use super::{Seized, Streamed};
use crate::error::{Error, Result};
use crate::image::*;
use std::io::{self, Write};
use std::time::Instant;

/// What an image will contain, decided while the process is stopped (see [`Seized::plan`]).
#[derive(Debug, Clone)]
pub struct StreamPlan {
    pid: i32,
    process: Vec<u8>,
    pages: PagePlan,
    /// The exact length of the image [`Seized::stream_plan`] writes.
    pub image_bytes: u64,
    /// Bytes of page contents in it.
    pub page_bytes: u64,
}

impl Seized {
    /// Decides which pages the image holds (one pagemap walk) and its exact length, without
    /// reading any page. The process must stay stopped until [`Seized::stream_plan`] is done.
    pub fn plan(&mut self, img: &ProcessImage) -> Result<StreamPlan> {
        if !self.collected || img.pid != self.pid {
            return Err(Error::Freeze {
                pid: self.pid,
                what: "streaming".into(),
                source: io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "stream needs the image collected from this process",
                ),
            });
        }
        let process = img.encode();
        let pages = plan_pages(self.pid, &img.vmas)?;
        let image_bytes = 12 // magic, version
            + 16 + process.len() as u64
            + pages.sections.iter().map(|s| s.wire_bytes()).sum::<u64>()
            + 16 + 16; // end section
        Ok(StreamPlan {
            pid: self.pid,
            page_bytes: pages.total,
            process,
            pages,
            image_bytes,
        })
    }

    /// Reads the planned pages and writes the whole image to `out` (exactly
    /// `plan.image_bytes` bytes), on the caller's thread, and flushes it.
    pub fn stream_plan<W: Write>(&mut self, plan: &StreamPlan, out: W) -> Result<Streamed> {
        if plan.pid != self.pid || !self.collected {
            return Err(Error::Freeze {
                pid: self.pid,
                what: "streaming".into(),
                source: io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "the plan is not of this process",
                ),
            });
        }
        let mem_start = Instant::now();
        let sio = |e: io::Error| Error::Stream(e);
        let mut sw = SectionWriter::new(io::BufWriter::with_capacity(1 << 16, out)).map_err(sio)?;
        sw.section(TAG_PROCESS, &[&plan.process]).map_err(sio)?;
        let (page_bytes, sections) = write_plan(self.pid, &plan.pages, &mut sw)?;
        let mut end = [0u8; 16];
        end[..8].copy_from_slice(&page_bytes.to_le_bytes());
        end[8..].copy_from_slice(&sections.to_le_bytes());
        sw.section(TAG_END, &[&end]).map_err(sio)?;
        sw.w.flush().map_err(sio)?;
        if sw.bytes != plan.image_bytes {
            return Err(Error::Stream(io::Error::other(format!(
                "wrote {} image bytes, planned {}",
                sw.bytes, plan.image_bytes
            ))));
        }
        self.streamed = true;
        Ok(Streamed {
            image_bytes: sw.bytes,
            page_bytes,
            sections,
            memory_time: mem_start.elapsed(),
        })
    }
}
