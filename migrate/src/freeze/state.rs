//! Reading process state for the image: the syscall gadget, /proc limits and signal masks.

use crate::image::*;
use crate::procfs::*;
use crate::sys::*;
use libc::pid_t;

pub(super) fn find_gadget(pid: pid_t, vmas: &[Vma]) -> Option<u64> {
    let cands = vmas.iter().filter(|v| v.kind == VmaKind::Vdso).chain(
        vmas.iter()
            .filter(|v| v.prot & libc::PROT_EXEC as u32 != 0 && v.kind == VmaKind::File),
    );
    for v in cands {
        let len = v.len().min(1 << 20) as usize;
        let mut buf = vec![0u8; len];
        if read_mem(pid, &mut buf, &[(v.start, len as u64)]).is_err() {
            continue;
        }
        if let Some(i) = buf.windows(2).position(|w| w == [0x0f, 0x05]) {
            return Some(v.start + i as u64);
        }
    }
    None
}

/// /proc/PID/limits lists RLIMIT_* 0..15 in order, after one header line. `None` unless all
/// 16 are there and every value parses (fails closed: never "unlimited" by default).
pub(super) fn parse_limits(s: &str) -> Option<Vec<(u32, u64, u64)>> {
    let val = |v: &str| {
        if v == "unlimited" {
            Some(u64::MAX)
        } else {
            v.parse().ok()
        }
    };
    let v = s
        .lines()
        .skip(1)
        .enumerate()
        .map(|(i, l)| {
            // the name column is 26 characters wide
            let rest = l.get(26..)?;
            let mut w = rest.split_whitespace();
            Some((i as u32, val(w.next()?)?, val(w.next()?)?))
        })
        .collect::<Option<Vec<_>>>()?;
    (v.len() == 16).then_some(v)
}

pub(super) fn sigmask_field(st: &str, key: &str) -> Option<u64> {
    status_field(st, key).and_then(|v| u64::from_str_radix(v, 16).ok())
}

/// Uid, Gid (4 each) and Groups of /proc/PID/status. Fails closed: `Err(line name)` when any
/// is missing or does not parse (an unparsable uid must never become 0, root).
pub(super) fn parse_creds(status: &str) -> Result<Creds, &'static str> {
    fn ids(status: &str, k: &'static str) -> Result<[u32; 4], &'static str> {
        let v: Vec<u32> = status_field(status, k)
            .ok_or(k)?
            .split_whitespace()
            .map(|v| v.parse().map_err(|_| k))
            .collect::<Result<_, _>>()?;
        v.try_into().map_err(|_| k)
    }
    Ok(Creds {
        uid: ids(status, "Uid")?,
        gid: ids(status, "Gid")?,
        groups: status_field(status, "Groups")
            .ok_or("Groups")?
            .split_whitespace()
            .map(|g| g.parse().map_err(|_| "Groups"))
            .collect::<Result<_, _>>()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_fail_closed() {
        let ok = "Uid:\t1000\t1000\t1000\t1000\nGid:\t100\t100\t100\t100\nGroups:\t4 27 \n";
        let c = parse_creds(ok).unwrap();
        assert_eq!((c.uid, c.gid, c.groups), ([1000; 4], [100; 4], vec![4, 27]));
        let no_groups = "Uid:\t1\t1\t1\t1\nGid:\t1\t1\t1\t1\nGroups:\t\n";
        assert!(parse_creds(no_groups).unwrap().groups.is_empty());
        for (bad, line) in [
            (ok.replace("Uid:\t1000", "Uid:\tx"), "Uid"),
            (ok.replace("\t1000\nGid", "\nGid"), "Uid"),
            (ok.replace("Uid:", "Xid:"), "Uid"),
            (ok.replace("Gid:\t100", "Gid:\t-1"), "Gid"),
            (ok.replace("4 27", "4 x"), "Groups"),
            (ok.replace("Groups:", "Grp:"), "Groups"),
        ] {
            assert_eq!(parse_creds(&bad).unwrap_err(), line, "{bad}");
        }
    }

    #[test]
    fn limits_parse_in_resource_order() {
        let s = std::fs::read_to_string("/proc/self/limits").unwrap();
        let l = parse_limits(&s).unwrap();
        assert!(parse_limits(&s.replace("unlimited", "unlimitedx")).is_none());
        assert!(parse_limits(&s[..s.len() / 2]).is_none());
        assert_eq!(l.len(), 16);
        let mut want = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit into a valid struct.
        unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut want) };
        assert_eq!(l[7], (7, want.rlim_cur, want.rlim_max));
    }
}
