//! TLS 1.3 records sealed and opened by hand (RFC 8446 §5.2–5.4) with a rustls client's
//! extracted keys: the independent oracle of the tests and the fuzz target of our record
//! layer (`src/transport/tls/records.rs`), which include this file by its path. It seals
//! any inner plaintext, valid or not, so that hostile records authenticate.

use ring::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey};
use rustls::{ConnectionTrafficSecrets, ExtractedSecrets};

/// One direction's key, IV and sequence number.
struct Keys {
    key: LessSafeKey,
    iv: [u8; 12],
    seq: u64,
}

impl Keys {
    fn new((seq, secrets): (u64, ConnectionTrafficSecrets)) -> Self {
        let (algorithm, key, iv) = match &secrets {
            ConnectionTrafficSecrets::Aes128Gcm { key, iv } => (&aead::AES_128_GCM, key, iv),
            ConnectionTrafficSecrets::Aes256Gcm { key, iv } => (&aead::AES_256_GCM, key, iv),
            ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => {
                (&aead::CHACHA20_POLY1305, key, iv)
            }
            _ => panic!("a TLS 1.3 suite"),
        };
        Self {
            key: LessSafeKey::new(UnboundKey::new(algorithm, key.as_ref()).unwrap()),
            iv: iv.as_ref().try_into().unwrap(),
            seq,
        }
    }

    fn nonce(&mut self) -> Nonce {
        let mut nonce = self.iv;
        for (n, s) in nonce[4..].iter_mut().zip(self.seq.to_be_bytes()) {
            *n ^= s;
        }
        self.seq += 1;
        Nonce::assume_unique_for_key(nonce)
    }
}

/// The client's side of the records: seals what the client sends, opens what it receives.
pub struct Oracle {
    tx: Keys,
    rx: Keys,
}

impl Oracle {
    pub fn new(secrets: ExtractedSecrets) -> Self {
        Self {
            tx: Keys::new(secrets.tx),
            rx: Keys::new(secrets.rx),
        }
    }

    /// A record of outer type 23 whose inner plaintext (content, type, padding) is exactly
    /// `inner`.
    pub fn record(&mut self, inner: &[u8]) -> Vec<u8> {
        let len = (inner.len() + 16) as u16;
        let mut record = vec![23, 3, 3];
        record.extend_from_slice(&len.to_be_bytes());
        let mut body = inner.to_vec();
        let aad = Aad::from(<[u8; 5]>::try_from(&record[..]).unwrap());
        let nonce = self.tx.nonce();
        self.tx
            .key
            .seal_in_place_append_tag(nonce, aad, &mut body)
            .unwrap();
        record.extend_from_slice(&body);
        record
    }

    /// `content` of `content_type`, unpadded.
    pub fn sealed(&mut self, content_type: u8, content: &[u8]) -> Vec<u8> {
        let mut inner = content.to_vec();
        inner.push(content_type);
        self.record(&inner)
    }

    /// Opens the server's records: (content type, content) each; an error for anything
    /// that is not a whole, authentic TLS 1.3 record.
    pub fn open(&mut self, mut wire: &[u8]) -> Result<Vec<(u8, Vec<u8>)>, String> {
        let mut records = Vec::new();
        while !wire.is_empty() {
            if wire.len() < 5 || wire[..3] != [23, 3, 3] {
                return Err(format!(
                    "not a TLS 1.3 record header: {:?}",
                    &wire[..wire.len().min(5)]
                ));
            }
            let len = usize::from(u16::from_be_bytes([wire[3], wire[4]]));
            if wire.len() < 5 + len {
                return Err("a partial record".into());
            }
            let (record, rest) = wire.split_at(5 + len);
            let aad = Aad::from(<[u8; 5]>::try_from(&record[..5]).unwrap());
            let mut body = record[5..].to_vec();
            let nonce = self.rx.nonce();
            let inner = (self.rx.key.open_in_place(nonce, aad, &mut body))
                .map_err(|_| "a record that does not authenticate".to_string())?;
            let end = (inner.iter().rposition(|&b| b != 0)).ok_or("no content type")?;
            records.push((inner[end], inner[..end].to_vec()));
            wire = rest;
        }
        Ok(records)
    }
}
