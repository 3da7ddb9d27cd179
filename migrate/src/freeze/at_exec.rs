//! Seizing a process at its next execve, stopped before the new program runs a single
//! instruction: the remote start of `mosrun` (its image is then tiny: the program's and the
//! loader's mappings, a fresh stack, no heap).
//!
//! [`watch_exec`] seizes the process now with PTRACE_O_TRACEEXEC; it runs on untouched (a
//! seize does not stop it). [`ExecWatch::wait`] waits for its exec (PTRACE_EVENT_EXEC, still
//! inside execve), then interrupts it on its way out of execve: it stops in an interrupt stop
//! at the entry point of the loader (or of a static program), where injected calls work as in
//! any other stop. The refusal checks of [`super::seize`] run there, and a [`Seized`] comes
//! back for the usual phases. Every other outcome lets it go: a refusal, a time-out, a failed
//! exec (the caller prints its error and exits on its own), a job-control stop before the exec
//! (it stays stopped, as its shell expects), or dropping the watch — the process then runs at
//! home as if it had never been watched. Signals that arrive meanwhile are passed on, or kept
//! and sent again when it is released (as [`super::seize`] does).

use super::checks::{check_status, classify_vmas};
use super::fds::{collect_fds, refuse_for_migration};
use super::seized::Held;
use super::{Seized, ferr, unsup};
use crate::error::{Error, Result};
use crate::sys::*;
use crate::tracer::{Slot, Tracer};
use libc::pid_t;
use std::time::{Duration, Instant};

/// A process seized by its own tracer thread, waiting for its next exec. `Send`. Dropping it
/// lets the process go (the kernel detaches when the tracer thread ends).
#[derive(Debug)]
pub struct ExecWatch {
    pid: pid_t,
    tracer: Tracer,
}

/// Seizes `pid` (which must be about to exec: its caller tells the daemon so, as `mosrun`
/// does) so that its next exec stops it. The process is not stopped now.
pub fn watch_exec(pid: i32) -> Result<ExecWatch> {
    // SAFETY: getpid has no preconditions.
    if pid <= 1 || pid == unsafe { libc::getpid() } {
        return Err(unsup(pid, "omnode cannot freeze itself or init"));
    }
    let tracer = Tracer::spawn(format!("omnode-trace-{pid}"))?;
    tracer.call(move |_slot| {
        let opts = libc::PTRACE_O_TRACESYSGOOD | libc::PTRACE_O_TRACEEXEC;
        ptrace_req(Req::Seize, pid, opts as usize).map_err(|e| match e.raw_os_error() {
            Some(libc::ESRCH) => Error::NoProcess { pid },
            Some(libc::EPERM) => unsup(
                pid,
                "not permitted to trace it (already traced, or not root?)",
            ),
            _ => ferr(pid, "PTRACE_SEIZE")(e),
        })
    })??;
    Ok(ExecWatch { pid, tracer })
}

impl ExecWatch {
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Waits at most `timeout` for the exec, and returns the process stopped at the first
    /// instruction of its new program, checked for migration like [`super::seize`] does.
    pub fn wait(self, timeout: Duration) -> Result<Seized> {
        let pid = self.pid;
        let deadline = Instant::now() + timeout;
        let (stop_start, pre_map) = self
            .tracer
            .call(move |slot| at_exec(slot, pid, deadline, timeout))??;
        Ok(Seized {
            pid,
            tracer: self.tracer,
            was_stopped: false,
            stop_start,
            collected: false,
            streamed: false,
            pre_map: Some(pre_map),
            guest: false,
            moving: true,
            tree: false,
        })
    }
}

/// On the tracer thread: the exec stop, then the interrupt stop at the program's entry.
fn at_exec(
    slot: &mut Slot,
    pid: pid_t,
    deadline: Instant,
    timeout: Duration,
) -> Result<(Instant, super::checks::MapView)> {
    // 1. until the exec stop; signals before it are delivered as they come
    loop {
        let Some(st) = wait_until(pid, deadline).map_err(ferr(pid, "waiting for its exec"))? else {
            // still running its old program: the tracer thread's end detaches it
            return Err(unsup(
                pid,
                format!("it did not start its program within {timeout:?}"),
            ));
        };
        if libc::WIFEXITED(st) || libc::WIFSIGNALED(st) {
            return Err(Error::NoProcess { pid });
        }
        if !libc::WIFSTOPPED(st) {
            continue;
        }
        match st >> 16 {
            libc::PTRACE_EVENT_EXEC => break,
            0 => {
                // a signal-delivery stop: deliver it, as if we were not here
                let sig = libc::WSTOPSIG(st);
                ptrace_req(Req::Cont, pid, sig as usize).map_err(ferr(pid, "PTRACE_CONT"))?;
            }
            libc::PTRACE_EVENT_STOP => {
                // a job-control stop before its exec: leave it stopped, as its shell expects
                let _ = ptrace_req(Req::Detach, pid, 0);
                return Err(unsup(
                    pid,
                    "it was stopped (job control) before it started its program",
                ));
            }
            _ => {
                ptrace_req(Req::Cont, pid, 0).map_err(ferr(pid, "PTRACE_CONT"))?;
            }
        }
    }
    stop_after_exec(slot, pid, deadline)
}

/// On the tracer thread, with `pid` in its PTRACE_EVENT_EXEC stop: step 2 and 3 of the remote
/// start (also for a child of a tree watch, [`super::exec_tree`]). The process ends up in an
/// interrupt stop at its program's entry, checked like [`super::seize`] does, with a
/// [`Held`] in `slot` (dropped: it runs on as if never stopped).
pub(super) fn stop_after_exec(
    slot: &mut Slot,
    pid: pid_t,
    deadline: Instant,
) -> Result<(Instant, super::checks::MapView)> {
    // 2. Still inside execve: the call's return value is written after this stop, so nothing
    // may be injected here. Interrupt it on its way to user mode instead.
    let stop_start = Instant::now();
    slot.set(Held {
        pid,
        orig_regs: None,
        orig_mask: None,
        stashed: Vec::new(),
        active: true,
        queued: Vec::new(),
        multi: false,
        threads: Vec::new(),
        _not_send: std::marker::PhantomData,
    });
    let g = slot.get::<Held>().expect("just set");
    ptrace_req(Req::Interrupt, pid, 0).map_err(ferr(pid, "PTRACE_INTERRUPT"))?;
    ptrace_req(Req::Cont, pid, 0).map_err(ferr(pid, "PTRACE_CONT"))?;
    let wait_for = deadline
        .max(Instant::now() + super::DEFAULT_STOP_TIMEOUT)
        .saturating_duration_since(Instant::now());
    if let Err(e) = super::wait_interrupt_stop(g, pid, wait_for) {
        g.active = false;
        return Err(e);
    }
    // From here on it is an ordinary seized process: the options of `seize` (a later exec,
    // e.g. at home after it came back, must not stop it).
    ptrace_req(Req::SetOptions, pid, libc::PTRACE_O_TRACESYSGOOD as usize)
        .map_err(ferr(pid, "PTRACE_SETOPTIONS"))?;
    // 3. the checks of `seize`, here where this thread is its tracer (a refusal drops the
    // Held with the slot's next state or the thread's end: it is released and runs at home)
    let checked = (|| {
        check_status(pid, true, false, false)?;
        let (_, pre_map) = classify_vmas(pid, None)?;
        let fds = collect_fds(pid, false)?;
        refuse_for_migration(pid, &fds)?;
        Ok(pre_map)
    })();
    match checked {
        Ok(pre_map) => Ok((stop_start, pre_map)),
        Err(e) => {
            g.release();
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root() -> bool {
        // SAFETY: geteuid has no preconditions.
        (unsafe { libc::geteuid() }) == 0
    }

    /// `sh -c 'echo ready; read go; exec PROG ARGS'`: a child that execs `prog` once a line
    /// arrives on its stdin (the returned pipe), with its stdout on a pipe. Returns once the
    /// shell runs (its `ready` read back): `spawn` returns when the exec of the shell has let
    /// go of our memory, a moment before that exec ends — a watch set up in that moment would
    /// see the shell's own exec.
    fn exec_on_signal(
        prog: &str,
        args: &[&str],
    ) -> (std::process::Child, std::process::ChildStdin) {
        use std::io::Read;
        let mut child = std::process::Command::new("/bin/sh")
            .args(["-c", "echo ready; read go; exec \"$@\"", "sh", prog])
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let go = child.stdin.take().unwrap();
        let mut ready = [0u8; 6];
        child
            .stdout
            .as_mut()
            .unwrap()
            .read_exact(&mut ready)
            .unwrap();
        assert_eq!(&ready, b"ready\n");
        (child, go)
    }

    /// The exec stops it at the first instruction of its program: the registers point at the
    /// loader's entry (AT_ENTRY of ld.so is AT_BASE + its entry), nothing of the program ran;
    /// released, it runs as if never watched.
    #[test]
    fn stops_at_the_first_instruction_after_exec_and_runs_on_when_released() {
        if !root() {
            assert_ne!(
                std::env::var("CI").as_deref(),
                Ok("true"),
                "needs root (ptrace of a child with PTRACE_O_TRACEEXEC); CI must run it"
            );
            eprintln!("skipped: needs root (ptrace)");
            return;
        }
        use std::io::Write;
        let (child, mut go) = exec_on_signal("/bin/echo", &["ran"]);
        let pid = child.id() as i32;
        let w = watch_exec(pid).unwrap();
        go.write_all(b"go\n").unwrap();
        let s = w.wait(Duration::from_secs(5)).unwrap();
        let st = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        assert!(st.contains("State:\tt"), "not in a tracing stop:\n{st}");
        let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap();
        assert!(exe.ends_with("echo"), "{exe:?}");
        // Its instruction pointer is the entry the kernel gave it (AT_ENTRY, or the
        // interpreter's entry): the stack still holds only argc/argv/envp/auxv.
        let regs = s.tracer.call(move |_| getregs(pid)).unwrap().unwrap();
        let auxv = std::fs::read(format!("/proc/{pid}/auxv")).unwrap();
        let aux: Vec<u64> = auxv
            .chunks_exact(8)
            .map(|c| u64::from_ne_bytes(c.try_into().unwrap()))
            .collect();
        let get = |k: u64| aux.chunks_exact(2).find(|p| p[0] == k).map(|p| p[1]);
        let base = get(libc::AT_BASE).unwrap();
        let entry = get(libc::AT_ENTRY).unwrap();
        let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
        let at_entry = if base == 0 {
            entry
        } else {
            // the loader's entry: its ELF header (e_entry at offset 24) is mapped at AT_BASE
            let mut e = [0u8; 8];
            read_mem(pid, &mut e, &[(base + 24, 8)]).unwrap();
            base + u64::from_ne_bytes(e)
        };
        assert_eq!(regs.rip, at_entry, "not at the entry point:\n{maps}");
        assert!(!maps.contains("[heap]"), "the program already ran:\n{maps}");
        // the stack pointer points at argc
        let mut argc = [0u8; 8];
        read_mem(pid, &mut argc, &[(regs.rsp, 8)]).unwrap();
        assert_eq!(u64::from_ne_bytes(argc), 2, "argc at rsp");
        drop(s);
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{:?}", out.status);
        assert_eq!(out.stdout, b"ran\n");
    }

    /// Refusals and time-outs let it go: a process that never execs runs on, untraced.
    #[test]
    fn no_exec_within_the_timeout_lets_it_run_on() {
        if !root() {
            assert_ne!(
                std::env::var("CI").as_deref(),
                Ok("true"),
                "needs root (ptrace); CI must run it"
            );
            eprintln!("skipped: needs root (ptrace)");
            return;
        }
        use std::io::Write;
        let (child, mut go) = exec_on_signal("/bin/echo", &["late"]);
        let pid = child.id() as i32;
        let w = watch_exec(pid).unwrap();
        let e = w.wait(Duration::from_millis(50)).unwrap_err();
        assert!(e.to_string().contains("did not start its program"), "{e}");
        let st = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        assert!(st.contains("TracerPid:\t0"), "left traced:\n{st}");
        go.write_all(b"go\n").unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success());
        assert_eq!(out.stdout, b"late\n");
    }
}
