//! Parsing of /proc/PID files.

use std::io;

pub(crate) struct MapsLine {
    pub start: u64,
    pub end: u64,
    pub prot: u32,
    pub shared: bool,
    pub offset: u64,
    #[allow(dead_code)]
    pub dev: (u32, u32),
    pub ino: u64,
    pub name: String,
}

pub(crate) fn parse_maps(s: &str) -> io::Result<Vec<MapsLine>> {
    let bad = || io::Error::new(io::ErrorKind::InvalidData, "cannot parse maps");
    let mut v = Vec::new();
    for line in s.lines() {
        let mut it = line.splitn(6, ' ');
        let range = it.next().ok_or_else(bad)?;
        let perms = it.next().ok_or_else(bad)?.as_bytes();
        let off = it.next().ok_or_else(bad)?;
        let dev = it.next().ok_or_else(bad)?;
        let ino = it.next().ok_or_else(bad)?;
        let name = it.next().unwrap_or("").trim_start().to_string();
        let (a, b) = range.split_once('-').ok_or_else(bad)?;
        let (ma, mi) = dev.split_once(':').ok_or_else(bad)?;
        if perms.len() < 4 {
            return Err(bad());
        }
        let mut prot = 0;
        if perms[0] == b'r' {
            prot |= libc::PROT_READ as u32;
        }
        if perms[1] == b'w' {
            prot |= libc::PROT_WRITE as u32;
        }
        if perms[2] == b'x' {
            prot |= libc::PROT_EXEC as u32;
        }
        v.push(MapsLine {
            start: u64::from_str_radix(a, 16).map_err(|_| bad())?,
            end: u64::from_str_radix(b, 16).map_err(|_| bad())?,
            prot,
            shared: perms[3] == b's',
            offset: u64::from_str_radix(off, 16).map_err(|_| bad())?,
            dev: (
                u32::from_str_radix(ma, 16).map_err(|_| bad())?,
                u32::from_str_radix(mi, 16).map_err(|_| bad())?,
            ),
            ino: ino.parse().map_err(|_| bad())?,
            name,
        });
    }
    Ok(v)
}

/// Fields of /proc/PID/stat after the comm, 1-based numbering as in proc(5).
pub(crate) fn stat_fields(s: &str) -> io::Result<Vec<String>> {
    let i = s
        .rfind(')')
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "cannot parse stat"))?;
    // fields[0] = pid, fields[1] = comm, fields[2] = state (field 3) ...
    let mut f = vec![String::new(), String::new()];
    f.extend(s[i + 1..].split_whitespace().map(str::to_string));
    Ok(f)
}

pub(crate) fn field_u64(f: &[String], n: usize) -> u64 {
    f.get(n - 1).and_then(|x| x.parse().ok()).unwrap_or(0)
}

/// A "Key:\tvalue" line of /proc/PID/status.
pub(crate) fn status_field<'a>(s: &'a str, key: &str) -> Option<&'a str> {
    s.lines()
        .find_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix(':')))
        .map(str::trim)
}

/// (pos, flags) of a /proc/PID/fdinfo/N file; `None` when either is missing or unparsable.
pub(crate) fn fdinfo(s: &str) -> Option<(u64, u32)> {
    let pos = status_field(s, "pos")?.parse().ok()?;
    let flags = u32::from_str_radix(status_field(s, "flags")?, 8).ok()?;
    Some((pos, flags))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_lines_with_spaces_and_specials() {
        let s = "55d5e19a6000-55d5e19a7000 r--p 00001000 fd:01 1234   /tmp/my prog (x)\n\
                 7ffef3495000-7ffef34b6000 rw-p 00000000 00:00 0                          [stack]\n\
                 7f0000000000-7f0000001000 rw-s 00000000 00:01 77   /dev/zero (deleted)\n\
                 7f0000002000-7f0000003000 ---p 00000000 00:00 0 \n";
        let m = parse_maps(s).unwrap();
        assert_eq!(m.len(), 4);
        assert_eq!(m[0].name, "/tmp/my prog (x)");
        assert_eq!((m[0].offset, m[0].ino, m[0].prot), (0x1000, 1234, 1));
        assert_eq!(m[1].name, "[stack]");
        assert!(m[2].shared && m[2].name == "/dev/zero (deleted)");
        assert_eq!((m[3].prot, m[3].name.as_str()), (0, ""));
        assert!(parse_maps("garbage\n").is_err());
    }

    #[test]
    fn fdinfo_fails_closed() {
        assert_eq!(fdinfo("pos:\t12\nflags:\t0100002\n"), Some((12, 0o100002)));
        assert_eq!(fdinfo("pos:\t12\n"), None);
        assert_eq!(fdinfo("flags:\t02\n"), None);
        assert_eq!(fdinfo("pos:\tx\nflags:\t02\n"), None);
        assert_eq!(fdinfo("pos:\t1\nflags:\t9\n"), None);
    }

    #[test]
    fn stat_after_comm_with_parens() {
        let f = stat_fields("42 (a) b) S 1 42 42 0").unwrap();
        assert_eq!(f[2], "S");
        assert_eq!(field_u64(&f, 5), 42);
    }
}
