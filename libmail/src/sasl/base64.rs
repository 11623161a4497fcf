//! Base64 (RFC 4648, standard alphabet, padded) for SASL payloads.
//!
//! SASL exchanges carry base64 both ways: the SMTP client's responses go to
//! the authentication server as they came, and the server's challenges go
//! back to the client as they came. Facteur only needs to *check* that a
//! client's text is base64 before passing it on (Postfix refuses anything
//! else with `Invalid base64 data in initial response`), and to encode and
//! decode in tests and in the `LOGIN`/`PLAIN` helpers of callers. The
//! workspace has no base64 crate, and this is small enough to keep here.

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

fn value(c: u8) -> Option<u8> {
    match c {
        b'A'..=b'Z' => Some(c - b'A'),
        b'a'..=b'z' => Some(c - b'a' + 26),
        b'0'..=b'9' => Some(c - b'0' + 52),
        b'+' => Some(62),
        b'/' => Some(63),
        _ => None,
    }
}

/// Encodes `data` with padding.
pub fn encode(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Whether `s` is well-formed base64: alphabet characters, then at most two
/// `=` at the very end, and a length that whole or padding-less groups
/// allow (a missing final padding is tolerated, as Dovecot tolerates it; a
/// lone sixth bit group is not). The empty string is valid.
pub fn is_valid(s: &str) -> bool {
    decode(s).is_some()
}

/// Decodes `s`, or `None` when it is not well-formed (see [`is_valid`]).
pub fn decode(s: &str) -> Option<Vec<u8>> {
    let bytes = s.as_bytes();
    let body_len = bytes.iter().rposition(|&c| c != b'=').map_or(0, |p| p + 1);
    let pad = bytes.len() - body_len;
    if pad > 2 || (pad > 0 && bytes.len() % 4 != 0) || body_len % 4 == 1 {
        return None;
    }
    let mut out = Vec::with_capacity(body_len / 4 * 3 + 2);
    let mut acc: u32 = 0;
    let mut bits = 0;
    for &c in &bytes[..body_len] {
        acc = (acc << 6) | u32::from(value(c)?);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    // Leftover bits must be zero (canonical encoding), as strict decoders
    // demand; anything else hides data in the padding.
    if acc != 0 {
        return None;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_rfc4648_vectors() {
        for (plain, enc) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(encode(plain.as_bytes()), enc);
            assert_eq!(decode(enc).unwrap(), plain.as_bytes());
        }
        assert_eq!(
            encode(b"\0alice@example.test\0alicepw"),
            "AGFsaWNlQGV4YW1wbGUudGVzdABhbGljZXB3"
        );
    }

    #[test]
    fn rejects_malformed_input() {
        for bad in [
            "!!!notbase64",
            "*",
            "Zg=",
            "Zg===",
            "Z",
            "Zm9v Yg==",
            "Zm=9",
            "Zh==",
            "Zm9vYg==\n",
        ] {
            assert!(!is_valid(bad), "{bad:?} accepted");
        }
        // Unpadded input is tolerated.
        assert_eq!(decode("Zm8").unwrap(), b"fo");
        // RFC 4954's "=" (empty initial response) is SMTP syntax, not
        // base64: the SMTP layer handles it.
        assert!(!is_valid("="));
    }
}
