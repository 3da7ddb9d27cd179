//! The cluster key: 32 random bytes, stored as 64 hex digits in a file only root can read.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use crate::Error;

pub const LEN: usize = 32;

/// Write a fresh key to `path` (mode 0600), refusing to replace one unless `force`.
pub fn generate(path: &Path, force: bool) -> Result<(), Error> {
    let err = |reason: String| Error::Key {
        path: path.to_owned(),
        reason,
    };
    if path.exists() && !force {
        return Err(err(
            "already exists; keep it (every node needs the same key) or pass --force".into(),
        ));
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .map_err(|e| err(format!("cannot create {}: {e}", dir.display())))?;
    }
    let mut key = [0u8; LEN];
    getrandom(&mut key).map_err(|e| err(format!("no randomness: {e}")))?;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| err(e.to_string()))?;
    f.set_permissions(std::fs::Permissions::from_mode(0o600))
        .map_err(|e| err(e.to_string()))?;
    writeln!(f, "{}", hex::encode(key)).map_err(|e| err(e.to_string()))?;
    Ok(())
}

/// Read the key at `path`, refusing (as ssh does with private keys) a file that others could
/// read or that belongs to another user, with the command that fixes it.
pub fn load(path: &Path) -> Result<[u8; LEN], Error> {
    use std::os::unix::fs::MetadataExt;
    let err = |reason: String| Error::Key {
        path: path.to_owned(),
        reason,
    };
    let keygen = || {
        format!(
            "make one with `omnode keygen --out {}` and copy it to every node",
            path.display()
        )
    };
    let meta = std::fs::metadata(path).map_err(|e| err(format!("{e} ({})", keygen())))?;
    let me = nix::unistd::geteuid().as_raw();
    if meta.uid() != me {
        return Err(err(format!(
            "owned by uid {}, not by uid {me} that runs omnode; fix it with `chown {me} {}` (or run omnode as its owner)",
            meta.uid(),
            path.display()
        )));
    }
    let mode = meta.mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(err(format!(
            "mode {mode:04o} lets group or others read it; fix it with `chmod 600 {}`",
            path.display()
        )));
    }
    let bytes = std::fs::read(path).map_err(|e| err(format!("{e} ({})", keygen())))?;
    parse(&bytes).ok_or_else(|| err(format!("{MALFORMED}; {}", keygen())))
}

/// The one message for every malformed key file.
pub const MALFORMED: &str = "not a cluster key (expected 64 hex digits on one line)";

fn parse(bytes: &[u8]) -> Option<[u8; LEN]> {
    let text = std::str::from_utf8(bytes).ok()?.trim();
    hex::decode(text).ok()?.try_into().ok()
}

fn getrandom(buf: &mut [u8]) -> std::io::Result<()> {
    use std::io::Read;
    std::fs::File::open("/dev/urandom")?.read_exact(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_load_and_differ() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a.key"), dir.path().join("b.key"));
        generate(&a, false).unwrap();
        generate(&b, false).unwrap();
        assert_ne!(load(&a).unwrap(), load(&b).unwrap());
        let mode = std::fs::metadata(&a).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let again = generate(&a, false).unwrap_err().to_string();
        assert!(again.contains("already exists"), "{again}");
        generate(&a, true).unwrap();
    }

    #[test]
    fn malformed_keys_all_give_one_message() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        let mut random = vec![0u8; 64];
        getrandom(&mut random).unwrap();
        random[0] = 0xff; // never valid UTF-8
        let good = format!("{}\n", "01".repeat(32));
        for bad in [
            b"abc".to_vec(),
            b"abcd".to_vec(),
            random,
            Vec::new(),
            "01".repeat(33).into_bytes(),
        ] {
            std::fs::write(&path, &bad).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
            let e = load(&path).unwrap_err().to_string();
            assert!(e.contains(MALFORMED) && e.contains("omnode keygen"), "{e}");
        }
        std::fs::write(&path, good).unwrap();
        assert_eq!(load(&path).unwrap(), [1u8; 32]);
    }

    #[test]
    fn a_key_others_can_read_is_refused_with_the_chmod_that_fixes_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        generate(&path, false).unwrap();
        for mode in [0o644, 0o640, 0o604, 0o666] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            let e = load(&path).unwrap_err().to_string();
            assert!(
                e.contains(&format!("mode {mode:04o}"))
                    && e.contains(&format!("chmod 600 {}", path.display())),
                "{e}"
            );
        }
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o400)).unwrap();
        load(&path).unwrap();
    }

    #[test]
    fn a_key_of_another_user_is_refused_with_the_chown_that_fixes_it() {
        if !nix::unistd::geteuid().is_root() {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "needs root to chown a file (CI runs as root)"
            );
            eprintln!("skipped: needs root to give the key file to another user");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        generate(&path, false).unwrap();
        std::os::unix::fs::chown(&path, Some(65534), None).unwrap();
        let e = load(&path).unwrap_err().to_string();
        assert!(
            e.contains("owned by uid 65534") && e.contains(&format!("chown 0 {}", path.display())),
            "{e}"
        );
    }
}
