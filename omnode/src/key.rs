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

/// Read the key at `path`.
pub fn load(path: &Path) -> Result<[u8; LEN], Error> {
    let err = |reason: String| Error::Key {
        path: path.to_owned(),
        reason,
    };
    let text = std::fs::read_to_string(path).map_err(|e| {
        err(format!(
            "{e} (make one with `omnode keygen --out {}` and copy it to every node)",
            path.display()
        ))
    })?;
    parse(&text).map_err(err)
}

fn parse(text: &str) -> Result<[u8; LEN], String> {
    let text = text.trim();
    let bytes =
        hex::decode(text).map_err(|_| format!("not a key: expected {} hex digits", 2 * LEN))?;
    bytes
        .try_into()
        .map_err(|b: Vec<u8>| format!("key has {} bytes, expected {LEN}", b.len()))
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
    fn bad_keys_are_refused() {
        assert!(parse("abc").unwrap_err().contains("hex digits"));
        assert!(parse("abcd").unwrap_err().contains("2 bytes"));
        assert_eq!(parse(&format!("{}\n", "01".repeat(32))).unwrap(), [1u8; 32]);
    }
}
