//! The pnet pre-shared key, derived from the cluster key.

use sha2::{Digest, Sha256};

/// Context string of the derivation; a new one gives an unrelated key.
const CONTEXT: &[u8] = b"omnode transport-p2p pnet v1";

/// The 32-byte libp2p private-network key for `cluster_key`:
/// HMAC-SHA256(key = cluster key, message = `"omnode transport-p2p pnet v1"`).
///
/// Keyed, so the pnet key reveals nothing about the cluster key and differs from what
/// any other use of the cluster key (transport-tcp's Noise PSK) sees.
pub fn pnet_key(cluster_key: &[u8; 32]) -> [u8; 32] {
    hmac_sha256(cluster_key, CONTEXT)
}

fn hmac_sha256(key: &[u8], msg: &[u8]) -> [u8; 32] {
    const BLOCK: usize = 64;
    let mut k = [0u8; BLOCK];
    if key.len() > BLOCK {
        k[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let mut ipad = [0x36u8; BLOCK];
    let mut opad = [0x5cu8; BLOCK];
    for i in 0..BLOCK {
        ipad[i] ^= k[i];
        opad[i] ^= k[i];
    }
    let inner = Sha256::new()
        .chain_update(ipad)
        .chain_update(msg)
        .finalize();
    Sha256::new()
        .chain_update(opad)
        .chain_update(inner)
        .finalize()
        .into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_matches_rfc4231_case_2() {
        let mac = hmac_sha256(b"Jefe", b"what do ya want for nothing?");
        let want = "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843";
        let got: String = mac.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn derived_key_depends_on_the_cluster_key() {
        let a = pnet_key(&[1; 32]);
        assert_eq!(a, pnet_key(&[1; 32]));
        assert_ne!(a, pnet_key(&[2; 32]));
        assert_ne!(a, [1; 32]);
    }
}
