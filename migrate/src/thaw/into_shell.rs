//! Thaw into the parked home shell: the process comes home into its own original process.
//!
//! When a moved process comes back, home does not make a new process: the original P is still
//! there, parked and trimmed ([`HomeShell`]), with its PID, parent, process group, session,
//! credentials and its own fd table. [`Thawing::into_shell`] takes the shell's tracer thread
//! over and runs the usual phases on P itself:
//! skeleton (checks; a trampoline; every mapping unmapped but the trampoline and the vDSO
//! areas, which are already where the image wants them; the image's mappings made) → pages →
//! attributes (without the session step: P is still in its own) → fds (exactly the image's
//! table: each fd that stays at home is the deputy's current copy for that number, installed
//! with pidfd_getfd, and refused if the deputy has none; each fd inside the process is made
//! again; every other fd P still holds from before it left is closed) → run (credentials are P's own and are not touched; the
//! registers, FPU state and mask; PTRACE_DETACH: P runs as a normal local process, its
//! parent's wait() and signals as before).
//!
//! Failures: before the skeleton changes anything the shell is handed back as it was. Once P
//! is being rebuilt, [`Thawing::back_to_shell`] empties it again and parks it (the argv/env
//! page is lost then: `ps` shows `[comm]`), so the deputy goes on serving the copy that still
//! runs where the image came from. Only if even that fails is P killed.

use super::*;
use crate::shell::HomeShell;

fn shell_err(pid: i32, what: impl Into<String>) -> Error {
    Error::Shell {
        pid,
        what: what.into(),
    }
}

/// P's open fd numbers.
fn open_fds(pid: i32) -> Result<Vec<i32>> {
    let rd = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map_err(|e| shell_err(pid, format!("listing /proc/{pid}/fd: {e}")))?;
    let mut v = Vec::new();
    for e in rd {
        let e = e.map_err(|e| shell_err(pid, format!("listing /proc/{pid}/fd: {e}")))?;
        match e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) {
            Some(n) => v.push(n),
            None => return Err(shell_err(pid, "an unreadable entry in /proc/PID/fd")),
        }
    }
    v.sort();
    Ok(v)
}

/// P's real, effective, saved uid and gid and its groups equal the image's.
fn same_creds(pid: i32, img: &ProcessImage) -> Result<()> {
    let st = read_to_string(&format!("/proc/{pid}/status"))
        .map_err(|e| shell_err(pid, format!("reading status: {e}")))?;
    let field = |k: &str| -> Vec<u32> {
        st.lines()
            .find_map(|l| l.strip_prefix(k))
            .map(|l| {
                l.split_whitespace()
                    .filter_map(|v| v.parse().ok())
                    .collect()
            })
            .unwrap_or_default()
    };
    let (u, g, mut gs) = (field("Uid:"), field("Gid:"), field("Groups:"));
    let mut want_gs = img.creds.groups.clone();
    gs.sort();
    want_gs.sort();
    if u.len() < 3 || g.len() < 3 || u[..3] != img.creds.uid[..3] || g[..3] != img.creds.gid[..3] {
        return Err(shell_err(
            pid,
            format!(
                "its credentials at home (uid {u:?} gid {g:?}) differ from the image's ({:?} {:?})",
                img.creds.uid, img.creds.gid
            ),
        ));
    }
    if gs != want_gs {
        return Err(shell_err(
            pid,
            "its supplementary groups at home differ from the image's",
        ));
    }
    Ok(())
}

impl Thawing {
    /// The skeleton phase of a thaw INTO the parked home shell `shell` (see the module docs).
    /// `deputy_fds` names, per fd number, an fd of the calling process holding the description
    /// the process uses at that number while away (the deputy's current copies): every fd of
    /// the image that stays at home must be named there, or the way home is refused; P's own
    /// fds are never kept (see `plan_fds`). On `Err` the shell comes back: parked as it
    /// was, or (if P could not be parked again) with the error saying P was killed.
    pub fn into_shell<R: Read>(
        reader: &mut ImageReader<R>,
        shell: HomeShell,
        deputy_fds: &[(i32, RawFd)],
    ) -> std::result::Result<Thawing, (HomeShell, Error)> {
        let t0 = Instant::now();
        let pid = shell.pid();
        let (tracer, _) = shell.into_parts();
        match prepare(reader, pid, deputy_fds) {
            Ok((img, close, opts, xstate)) => {
                let img2 = img.clone();
                let r = tracer.call(move |slot: &mut Slot| build_in_shell(slot, pid, &img2));
                match r {
                    Ok(Ok(())) => {
                        reader.process = img.clone();
                        Ok(Thawing {
                            tracer,
                            pid,
                            img,
                            opts,
                            xstate,
                            pid_note: None,
                            t0,
                            page_bytes: 0,
                            memory_time: Duration::ZERO,
                            listener: None,
                            done: 1,
                            shell_close: Some(close),
                        })
                    }
                    Ok(Err(e)) | Err(e) => Err((HomeShell::from_parts(tracer, pid), e)),
                }
            }
            Err(e) => Err((HomeShell::from_parts(tracer, pid), e)),
        }
    }

    /// After a failed phase of a thaw into the home shell: P emptied and parked again, the
    /// shell handed back (see the module docs). A thaw into a new process is refused.
    pub fn back_to_shell(self) -> Result<HomeShell> {
        if self.shell_close.is_none() {
            return Err(Error::Thaw("not a thaw into the home shell".into()));
        }
        let pid = self.pid;
        self.tracer.call(move |slot: &mut Slot| {
            let Some(mut bd) = slot.take::<Building>() else {
                // already parked again (a failed run does that itself)
                return Ok(());
            };
            match bd.shell.take() {
                Some(sh) => {
                    drop(bd);
                    crate::shell::restore_parked(slot, sh)
                }
                None => Err(gone(pid)),
            }
        })??;
        Ok(HomeShell::from_parts(self.tracer, pid))
    }
}

type Prepared = (Arc<ProcessImage>, Vec<i32>, ThawOptions, Vec<u8>);

/// Checks that need no change to P, and the image adapted to P: no session step, the fds.
fn prepare<R: Read>(
    reader: &ImageReader<R>,
    pid: i32,
    deputy_fds: &[(i32, RawFd)],
) -> Result<Prepared> {
    let src: &ProcessImage = &reader.process;
    let boot_id = read_to_string("/proc/sys/kernel/random/boot_id").unwrap_or_default();
    let same_boot = !src.boot_id.is_empty() && boot_id.trim() == src.boot_id;
    check_file(&src.exe, &src.exe_id, same_boot)?;
    for v in &src.vmas {
        if let (VmaKind::File, Some(id)) = (v.kind, &v.file) {
            check_file(&v.name, id, same_boot)?;
        }
    }
    same_creds(pid, src)?;
    let xstate = fit_xstate(&src.xstate)?;
    // the vDSO areas are P's own: they must be where the image has them
    let maps = parse_maps(
        &read_to_string(&format!("/proc/{pid}/maps"))
            .map_err(|e| shell_err(pid, format!("reading maps: {e}")))?,
    )
    .map_err(|e| shell_err(pid, format!("parsing maps: {e}")))?;
    let own: Vec<(VmaKind, u64, u64)> = maps
        .iter()
        .filter_map(|m| {
            let k = match m.name.as_str() {
                "[vvar]" => VmaKind::Vvar,
                "[vvar_vclock]" => VmaKind::VvarVclock,
                "[vdso]" => VmaKind::Vdso,
                _ => return None,
            };
            Some((k, m.start, m.end))
        })
        .collect();
    if own != special_areas(&src.vmas) {
        return Err(Error::TargetUnfit {
            reason: format!(
                "the vDSO areas of process {pid} at home differ from the image's; it cannot come home into it"
            ),
        });
    }
    // the fd table: exactly the image's (see `plan_fds`)
    let have = open_fds(pid)?;
    let mut img = src.clone();
    img.session_leader = false;
    img.pgrp_leader = false;
    let (placeholders, close) = plan_fds(pid, &img.fds, &have, deputy_fds)?;
    let opts = ThawOptions {
        fd_placeholders: placeholders,
        ..Default::default()
    };
    Ok((Arc::new(img), close, opts, xstate))
}

/// The placeholders (image fd, deputy's fd) and P's fds to close.
type FdPlan = (Vec<(i32, RawFd)>, Vec<i32>);

/// The fd table of a process coming home, decided by the image alone (P's own fd table is
/// stale: the process may have closed an fd while away, and reused its number for another
/// file). `fds`: the image's; `have`: P's open fd numbers; `deputy_fds`: the deputy's current
/// copies by number. Returns the placeholders (every fd of the image that stays at home, from
/// the deputy's copy with its number) and P's fds to close before the table is installed
/// (every one the image does not have, and those the image makes again inside the process; a
/// placeholder's number is replaced by it, dup3). A home-backed fd of the image with no deputy
/// copy is refused: P's own fd at that number may be a file the process closed while away.
/// Deputy copies of numbers the image does not have (or has as an fd that lives inside the
/// process) are not used.
fn plan_fds(pid: i32, fds: &[Fd], have: &[i32], deputy_fds: &[(i32, RawFd)]) -> Result<FdPlan> {
    let mut placeholders = Vec::new();
    let mut inside = Vec::new();
    for f in fds {
        if crate::freeze::lives_inside(fds, f) {
            // moved with the process (a pipe inside it, an eventfd, ...): made again here from
            // the image; whatever P holds at that number is closed first
            inside.push(f.fd);
            continue;
        }
        match deputy_fds.iter().find(|d| d.0 == f.fd) {
            Some(&(_, local)) => placeholders.push((f.fd, local)),
            None => {
                return Err(shell_err(
                    pid,
                    format!(
                        "fd {} of the image stays at home but the deputy holds no copy of it; the process stays where it runs",
                        f.fd
                    ),
                ));
            }
        }
    }
    let close = have
        .iter()
        .copied()
        .filter(|n| inside.contains(n) || !placeholders.iter().any(|p| p.0 == *n))
        .collect();
    Ok((placeholders, close))
}

/// On the shell's tracer thread: P stopped, emptied but for the vDSO areas, the image's
/// mappings made. Before anything is unmapped a failure leaves the shell parked as it was; after,
/// P is emptied and parked again.
fn build_in_shell(slot: &mut Slot, pid: i32, img: &ProcessImage) -> Result<()> {
    let sh = crate::shell::take_stopped(slot, pid)?;
    let (gadget, parked) = sh.parking();
    let mut t = Tracee::new(pid, gadget, parked);
    t.call_timeout = Some(Duration::from_secs(10));
    slot.set(Building {
        b: Builder {
            t,
            tramp: 0,
            data_off: 0,
        },
        guard: ChildGuard { pid, armed: false },
        listener_in_child: None,
        shell: Some(sh),
    });
    let bd = slot.get::<Building>().expect("just set");
    let r = (|| {
        let b = &mut bd.b;
        let maps = parse_maps(
            &read_to_string(&format!("/proc/{pid}/maps")).map_err(terr("reading maps"))?,
        )
        .map_err(terr("parsing maps"))?;
        let keep_names = ["[vvar]", "[vvar_vclock]", "[vdso]"];
        let (tramp, _) = super::place_trampoline(b, pid, &maps, img)?;
        let mut keep: Vec<(u64, u64)> = vec![(tramp, tramp + TRAMP)];
        keep.extend(
            maps.iter()
                .filter(|m| keep_names.contains(&m.name.as_str()))
                .map(|m| (m.start, m.end)),
        );
        keep.sort();
        let mut calls = Vec::new();
        let mut cur = 0u64;
        for &(s, e) in keep.iter().chain(std::iter::once(&(TASK_SIZE, TASK_SIZE))) {
            if s > cur {
                calls.push(call("munmap", libc::SYS_munmap, &[cur, s - cur]));
            }
            cur = cur.max(e);
        }
        b.run(&calls)?;
        maps::map_vmas(b, img)
    })();
    if let Err(e) = r {
        let mut bd = slot.take::<Building>().expect("set above");
        let sh = bd.shell.take().expect("set above");
        drop(bd);
        crate::shell::restore_parked(slot, sh)?;
        return Err(e);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(fd: i32, p: &str) -> Fd {
        Fd {
            fd,
            kind: FdKind::Path {
                path: p.into(),
                flags: libc::O_RDWR as u32,
                pos: 0,
                is_dir: false,
            },
        }
    }

    fn pipe(fd: i32, write: bool) -> Fd {
        Fd {
            fd,
            kind: FdKind::Pipe {
                pipe: 9,
                write,
                flags: 0,
                size: 65536,
                data: Vec::new(),
            },
        }
    }

    fn stdio(fd: i32) -> Fd {
        Fd {
            fd,
            kind: FdKind::Stdio {
                cloexec: false,
                what: "pipe".into(),
            },
        }
    }

    #[test]
    fn a_number_reused_while_away_comes_from_the_deputy_and_a_closed_one_is_closed() {
        // left with 0-2, 3 (file a) and 4 (file c); away it closed 3 and 4 and opened b at 3
        let img = [stdio(0), stdio(1), stdio(2), path(3, "/dev/null")];
        let have = [0, 1, 2, 3, 4];
        let deputy = [(0, 100), (1, 101), (2, 102), (3, 103)];
        let (ph, close) = plan_fds(7, &img, &have, &deputy).unwrap();
        assert_eq!(ph, deputy.to_vec());
        // P's 0-3 are replaced by the deputy's copies, its 4 (c) is closed
        assert_eq!(close, vec![4]);
    }

    #[test]
    fn a_home_fd_the_deputy_does_not_hold_is_refused_even_if_p_has_that_number() {
        let img = [stdio(0), path(5, "/dev/null")];
        for have in [vec![0, 5], vec![0]] {
            let e = plan_fds(7, &img, &have, &[(0, 100)]).unwrap_err();
            let s = e.to_string();
            assert!(
                s.contains("fd 5") && s.contains("deputy holds no copy"),
                "{s}"
            );
        }
    }

    #[test]
    fn fds_inside_the_process_are_made_again_and_stale_deputy_copies_are_not_used() {
        // a pipe made away at 3 and 4 (3 was a home file before), the deputy still lists 3 and
        // 8, which the image does not have as home fds
        let img = [stdio(0), pipe(3, false), pipe(4, true)];
        let have = [0, 3, 6];
        let deputy = [(0, 100), (3, 103), (8, 108)];
        let (ph, close) = plan_fds(7, &img, &have, &deputy).unwrap();
        assert_eq!(ph, vec![(0, 100)]);
        assert_eq!(close, vec![3, 6]);
    }
}
