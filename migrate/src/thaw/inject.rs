//! Injected system calls into the new process: the trampoline layout, batches, arguments.

use super::terr;
use crate::error::{Error, Result};
use crate::sys::*;

/// Layout of the trampoline area mapped into the new process.
pub(super) const GADGET_AT: u64 = 0; // `syscall; int3`
const DATA_AT: u64 = 4096; // arguments (paths, structs), bump-allocated per call or batch
const DATA_END: u64 = 128 << 10;
pub(super) const OUT_AT: u64 = 128 << 10; // results of a batch, 8 bytes each
pub(super) const CODE_AT: u64 = 136 << 10; // code of a batch
const MAX_BATCH: usize = 1000;

/// One injected system call, with a description for error messages.
pub(super) struct Call {
    what: String,
    nr: i64,
    a: [u64; 6],
}
pub(super) fn call(what: impl Into<String>, nr: i64, args: &[u64]) -> Call {
    let mut a = [0u64; 6];
    a[..args.len()].copy_from_slice(args);
    Call {
        what: what.into(),
        nr,
        a,
    }
}

pub(super) struct Builder {
    pub(super) t: Tracee,
    pub(super) tramp: u64,
    pub(super) data_off: u64,
}

impl Builder {
    /// One call on its own, one ptrace stop (use `run` for many independent calls).
    pub(super) fn sys(&mut self, what: &str, nr: i64, args: &[u64]) -> Result<u64> {
        self.data_off = 0;
        self.t.syscall(nr, args).map_err(terr(what.to_string()))
    }
    /// Many calls with one ptrace stop per MAX_BATCH; fails on the first call that failed.
    pub(super) fn run(&mut self, calls: &[Call]) -> Result<Vec<u64>> {
        let mut out = Vec::with_capacity(calls.len());
        for chunk in calls.chunks(MAX_BATCH) {
            let list: Vec<(i64, [u64; 6])> = chunk.iter().map(|c| (c.nr, c.a)).collect();
            let r = self
                .t
                .batch(self.tramp + CODE_AT, self.tramp + OUT_AT, &list)
                .map_err(terr("injected system calls"))?;
            for (c, v) in chunk.iter().zip(r) {
                if (-4095..0).contains(&v) {
                    return Err(terr(c.what.clone())(crate::error::from_neg(v)));
                }
                out.push(v as u64);
            }
        }
        self.data_off = 0;
        Ok(out)
    }
    /// Copies `data` into the argument area; valid until the next `sys`/`run`.
    pub(super) fn data(&mut self, data: &[u8]) -> Result<u64> {
        let off = (self.data_off + 15) & !15;
        if DATA_AT + off + data.len() as u64 > DATA_END {
            return Err(Error::Thaw(
                "arguments too large for the scratch area".into(),
            ));
        }
        let a = self.tramp + DATA_AT + off;
        write_mem(self.t.pid, data, &[(a, data.len() as u64)])
            .map_err(terr("writing into the new process"))?;
        self.data_off = off + data.len() as u64;
        Ok(a)
    }
    pub(super) fn cstr(&mut self, p: &str) -> Result<u64> {
        let mut b = p.as_bytes().to_vec();
        b.push(0);
        self.data(&b)
    }
}
