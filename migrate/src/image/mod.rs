//! The image format: a versioned, checksummed stream with no seeking.
//!
//! ```text
//! "OMNIMAGE" u32-le version (2; version 1 is still read)
//! section*   = tag u32-le | len u64-le | payload[len] | crc32(tag|len|payload) u32-le
//!   PROCESS  (exactly one, first): every piece of process state except memory contents;
//!            in version 2 a sequence of self-describing records (see `codec`):
//!            record = tag u32-le | len u64-le | payload[len]; a tag with bit 31 set is
//!            optional (a reader that does not know it skips it), any other unknown tag is
//!            refused (state the reader could not restore)
//!   PAGES    (any number): u32 nruns, nruns × (addr u64, len u64), then the bytes of the runs
//!   END      (last): u64 total page bytes, u64 number of PAGES sections
//! ```
//! A stream without END is truncated; a section whose CRC does not match is corrupt.

mod codec;
mod section;
mod tree;
mod types;

pub use section::rewrite_as_v1;
pub(crate) use section::{SectionReader, SectionWriter, read_pages};
pub use tree::{
    Shared, SharedEnd, SharedKind, TREE_MAGIC, TREE_VERSION, TreeImage, TreeProc, is_tree_image,
};
pub use types::*;

pub const MAGIC: &[u8; 8] = b"OMNIMAGE";
pub const VERSION: u32 = 2;
pub(crate) const TAG_PROCESS: u32 = 1;
pub(crate) const TAG_PAGES: u32 = 2;
pub(crate) const TAG_END: u32 = 3;
const MAX_META: u64 = 64 << 20;
/// Largest PAGES section payload accepted by a reader.
pub(crate) const MAX_PAGES_SECTION: u64 = 64 << 20;
pub(crate) const PAGE: u64 = 4096;
