//! Who holds which lock ranges on a serving node, and who waits for whom: the wait-for graph
//! that finds a deadlock (EDEADLK) between lock owners of any nodes. Pure (no IO, no time).
//!
//! The kernel holds the real locks (OFD locks, see [`crate::server`]); this mirror records the
//! ranges each owner was granted, as POSIX applies them (a new lock replaces the owner's
//! overlapping ranges; F_UNLCK cuts them out), so the server can name the holders a waiter
//! waits for. It knows only the owners of MFS clients: a local process's lock on the serving
//! node is not in it (the kernel still enforces it; a deadlock through one is not found).
//! Files on different serving nodes have separate graphs: a cycle across servers is not found.

use std::collections::{HashMap, HashSet};

use crate::proto::{Handle, Lock};

/// A lock owner: (client node, owner id on that node).
pub type Owner = (u32, u64);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Range {
    typ: i32,
    start: u64,
    end: u64,
}

fn overlaps(a: (u64, u64), b: (u64, u64)) -> bool {
    a.0 <= b.1 && b.0 <= a.1
}

/// Two locks of different owners conflict: their ranges overlap and one of them writes.
fn conflicts(typ: i32, r: (u64, u64), held: &Range) -> bool {
    overlaps(r, (held.start, held.end)) && (typ == libc::F_WRLCK || held.typ == libc::F_WRLCK)
}

#[derive(Default, Debug)]
pub struct Graph {
    held: HashMap<(Owner, Handle), Vec<Range>>,
    waiting: HashMap<Owner, (Handle, Lock)>,
}

impl Graph {
    /// `who` was granted `l` on `h` (F_UNLCK: released that range).
    pub fn granted(&mut self, who: Owner, h: Handle, l: Lock) {
        let v = self.held.entry((who, h)).or_default();
        let mut out = Vec::with_capacity(v.len() + 2);
        for r in v.drain(..) {
            if !overlaps((r.start, r.end), (l.start, l.end)) {
                out.push(r);
                continue;
            }
            if r.start < l.start {
                out.push(Range {
                    end: l.start - 1,
                    ..r
                });
            }
            if r.end > l.end {
                out.push(Range {
                    start: l.end + 1,
                    ..r
                });
            }
        }
        if l.typ != libc::F_UNLCK {
            out.push(Range {
                typ: l.typ,
                start: l.start,
                end: l.end,
            });
        }
        if out.is_empty() {
            self.held.remove(&(who, h));
        } else {
            *v = out;
        }
    }

    /// Every lock of `who` on `h` went (it closed the file).
    pub fn dropped(&mut self, who: Owner, h: Handle) {
        self.held.remove(&(who, h));
    }

    /// Node `client` is gone: its locks and waits go.
    pub fn client_gone(&mut self, client: u32) {
        self.held.retain(|(o, _), _| o.0 != client);
        self.waiting.retain(|o, _| o.0 != client);
    }

    /// The owners other than `who` holding a lock on `h` that conflicts with `l`.
    pub fn holders(&self, who: Owner, h: Handle, l: Lock) -> Vec<Owner> {
        let mut out: Vec<Owner> = self
            .held
            .iter()
            .filter(|((o, fh), rs)| {
                *o != who && *fh == h && rs.iter().any(|r| conflicts(l.typ, (l.start, l.end), r))
            })
            .map(|((o, _), _)| *o)
            .collect();
        out.sort_unstable();
        out.dedup();
        out
    }

    /// Whether `who` waiting for `l` on `h` would close a cycle: a holder it would wait for
    /// waits (through any chain of waiters) for `who`.
    pub fn would_deadlock(&self, who: Owner, h: Handle, l: Lock) -> bool {
        let mut seen = HashSet::new();
        let mut todo = self.holders(who, h, l);
        while let Some(o) = todo.pop() {
            if o == who {
                return true;
            }
            if !seen.insert(o) {
                continue;
            }
            if let Some(&(h2, l2)) = self.waiting.get(&o) {
                todo.extend(self.holders(o, h2, l2));
            }
        }
        false
    }

    /// `who` waits for `l` on `h` (one wait per owner: a thread blocks on one lock at once).
    pub fn wait(&mut self, who: Owner, h: Handle, l: Lock) {
        self.waiting.insert(who, (h, l));
    }

    /// `who` no longer waits.
    pub fn unwait(&mut self, who: Owner) {
        self.waiting.remove(&who);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::LOCK_TO_EOF;

    fn l(typ: i32, start: u64, end: u64) -> Lock {
        Lock {
            typ,
            start,
            end,
            pid: 0,
        }
    }
    const W: i32 = libc::F_WRLCK;
    const R: i32 = libc::F_RDLCK;
    const U: i32 = libc::F_UNLCK;

    #[test]
    fn ranges_are_replaced_and_cut_as_posix_does() {
        let mut g = Graph::default();
        let (a, b) = ((1, 1), (2, 1));
        g.granted(a, 7, l(W, 0, 99));
        assert_eq!(g.holders(b, 7, l(R, 50, 50)), [a]);
        assert!(g.holders(b, 8, l(R, 50, 50)).is_empty(), "another file");
        assert!(g.holders(a, 7, l(W, 50, 50)).is_empty(), "its own lock");
        g.granted(a, 7, l(U, 40, 59));
        assert!(
            g.holders(b, 7, l(W, 40, 59)).is_empty(),
            "the cut-out middle"
        );
        assert_eq!(g.holders(b, 7, l(W, 30, 45)), [a]);
        assert_eq!(g.holders(b, 7, l(W, 55, 70)), [a]);
        g.granted(a, 7, l(R, 0, LOCK_TO_EOF));
        assert!(g.holders(b, 7, l(R, 10, 10)).is_empty(), "readers share");
        assert_eq!(g.holders(b, 7, l(W, 1000, 1000)), [a], "to the end of file");
        g.dropped(a, 7);
        assert!(g.holders(b, 7, l(W, 0, LOCK_TO_EOF)).is_empty());
    }

    #[test]
    fn a_cycle_of_waits_is_a_deadlock_and_a_chain_is_not() {
        let mut g = Graph::default();
        let (a, b, c) = ((1, 10), (3, 20), (2, 30));
        g.granted(a, 1, l(W, 0, 0)); // a holds file 1
        g.granted(b, 2, l(W, 0, 0)); // b holds file 2
        assert!(!g.would_deadlock(a, 2, l(W, 0, 0)), "b waits for nobody");
        g.wait(a, 2, l(W, 0, 0)); // a waits for b
        assert!(
            g.would_deadlock(b, 1, l(W, 0, 0)),
            "b waiting for a closes the cycle"
        );
        assert!(
            !g.would_deadlock(c, 1, l(W, 0, 0)),
            "c waiting for a: a chain"
        );
        // three owners: c holds 3, b waits for c, c asks for file 1 (a waits for b)
        g.granted(c, 3, l(W, 0, 0));
        g.wait(b, 3, l(W, 0, 0));
        assert!(g.would_deadlock(c, 1, l(W, 0, 0)), "c → a → b → c");
        g.unwait(a);
        assert!(!g.would_deadlock(c, 1, l(W, 0, 0)), "a no longer waits");
        g.client_gone(3);
        assert!(
            g.holders(a, 2, l(W, 0, 0)).is_empty(),
            "b's node went: its locks too"
        );
    }
}
