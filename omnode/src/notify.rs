//! systemd's readiness protocol (sd_notify): one datagram to the socket named by
//! `$NOTIFY_SOCKET`, if any. Without it (not started by systemd) nothing is sent.

use std::os::unix::net::UnixDatagram;

/// Tell the service manager `state` (e.g. `READY=1\nSTATUS=...`). Returns whether a
/// manager was told; an unreachable manager is logged, never fatal.
pub fn notify(state: &str) -> bool {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return false;
    };
    let sent = (|| {
        let sock = UnixDatagram::unbound()?;
        let bytes = path.as_encoded_bytes();
        if let Some(name) = bytes.strip_prefix(b"@") {
            // An abstract socket name.
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
            sock.send_to_addr(state.as_bytes(), &addr)?;
        } else {
            sock.send_to(state.as_bytes(), &path)?;
        }
        Ok::<_, std::io::Error>(())
    })();
    match sent {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!(
                "cannot tell systemd ({}): {e}",
                std::path::Path::new(&path).display()
            );
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sends_the_state_to_notify_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let manager = UnixDatagram::bind(&path).unwrap();
        // SAFETY: this test is the only one in this binary touching NOTIFY_SOCKET.
        unsafe { std::env::set_var("NOTIFY_SOCKET", &path) };
        assert!(notify("READY=1\nSTATUS=node 1 up"));
        unsafe { std::env::remove_var("NOTIFY_SOCKET") };
        let mut buf = [0u8; 64];
        let n = manager.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1\nSTATUS=node 1 up");
        assert!(!notify("READY=1"), "no NOTIFY_SOCKET: nothing sent");
    }
}
