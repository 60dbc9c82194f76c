//! TLS 1.3's record layer (RFC 8446 §5), ours once the handshake is done.
//!
//! rustls does the handshake; then the session hands its traffic keys over
//! (`dangerous_into_kernel_connection`, the API rustls keeps for kernel TLS) and keeps
//! only its key schedule, for key updates. From there each record is sealed straight into
//! the buffer the driver sends and opened in the driver's lent buffer: no record buffer of
//! rustls' per send, no copy between them, and none of the handshake's state kept for the
//! connection's life. A profile of fan-out over wss put rustls' record layer (its
//! per-record buffer and message plumbing) beside AES-GCM itself as TLS's largest cost.
//!
//! What this layer owns, that rustls did before:
//! - nonces (the IV XOR the record's sequence number, §5.3) and the record header as the
//!   AEAD's additional data (§5.2);
//! - the inner content type and padding: application data, alerts, and post-handshake
//!   handshake messages, of which a server accepts only KeyUpdate (§4.6.3);
//! - limits: ciphertext over 2^14 + 256 or plaintext over 2^14 is `record_overflow`
//!   (§5.2, §5.4), anything but application data on the outer type is `unexpected_message`
//!   (after the handshake no plaintext record may arrive), a record that does not
//!   authenticate is `bad_record_mac`, and the sender's keys are updated before AES-GCM's
//!   confidentiality limit (§5.5);
//! - alerts: close_notify both ways, user_canceled ignored, every other alert fatal (§6).
//!
//! TLS 1.2 sessions stay on rustls' record layer (different nonces and additional data,
//! and renegotiation to refuse); browsers speak TLS 1.3.

use ring::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey};
use rustls::kernel::KernelConnection;
use rustls::server::ServerConnectionData;
use rustls::{ConnectionTrafficSecrets, ExtractedSecrets, SupportedCipherSuite};
use wsgate_proto::OutQueue;

/// Largest plaintext in one record (§5.1).
pub(super) const MAX_PLAINTEXT: usize = 1 << 14;
/// Largest ciphertext a peer may send in one record (§5.2).
const MAX_CIPHERTEXT: usize = MAX_PLAINTEXT + 256;
const HEADER: usize = 5;
const TAG: usize = 16;
/// What a record adds to its plaintext: header, inner content type, tag.
pub(super) const OVERHEAD: usize = HEADER + 1 + TAG;

/// Content types (§5.1).
const ALERT: u8 = 21;
const HANDSHAKE: u8 = 22;
const APPLICATION_DATA: u8 = 23;
/// Handshake message type of KeyUpdate (§4.6.3).
const KEY_UPDATE: u8 = 24;

/// Alert descriptions (§6).
pub(super) mod alert {
    pub const CLOSE_NOTIFY: u8 = 0;
    pub const UNEXPECTED_MESSAGE: u8 = 10;
    pub const BAD_RECORD_MAC: u8 = 20;
    pub const RECORD_OVERFLOW: u8 = 22;
    pub const ILLEGAL_PARAMETER: u8 = 47;
    pub const DECODE_ERROR: u8 = 50;
    pub const INTERNAL_ERROR: u8 = 80;
    pub const USER_CANCELED: u8 = 90;
}

/// Why the session ends. `alert` is what we send (none when the peer's own alert ended it).
#[derive(Debug)]
pub(super) struct Fatal {
    pub alert: Option<u8>,
    pub reason: String,
}

fn fatal(alert: u8, reason: impl Into<String>) -> Fatal {
    Fatal {
        alert: Some(alert),
        reason: reason.into(),
    }
}

/// One direction's key, IV and next sequence number.
pub(super) struct Keys {
    key: LessSafeKey,
    iv: [u8; aead::NONCE_LEN],
    /// The next record's sequence number.
    pub(super) seq: u64,
}

impl Keys {
    fn new((seq, secrets): (u64, ConnectionTrafficSecrets)) -> Result<Self, Fatal> {
        let (algorithm, key, iv) = match &secrets {
            ConnectionTrafficSecrets::Aes128Gcm { key, iv } => (&aead::AES_128_GCM, key, iv),
            ConnectionTrafficSecrets::Aes256Gcm { key, iv } => (&aead::AES_256_GCM, key, iv),
            ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => {
                (&aead::CHACHA20_POLY1305, key, iv)
            }
            _ => {
                return Err(fatal(
                    alert::INTERNAL_ERROR,
                    "a cipher suite we do not seal",
                ))
            }
        };
        let key = UnboundKey::new(algorithm, key.as_ref())
            .map_err(|_| fatal(alert::INTERNAL_ERROR, "a traffic key of the wrong length"))?;
        let iv = iv
            .as_ref()
            .try_into()
            .map_err(|_| fatal(alert::INTERNAL_ERROR, "an IV of the wrong length"))?;
        Ok(Self {
            key: LessSafeKey::new(key),
            iv,
            seq,
        })
    }

    /// This record's nonce (§5.3); each sequence number is used once, then advanced.
    fn next_nonce(&mut self) -> Nonce {
        let mut nonce = self.iv;
        for (n, s) in nonce[4..].iter_mut().zip(self.seq.to_be_bytes()) {
            *n ^= s;
        }
        self.seq += 1;
        Nonce::assume_unique_for_key(nonce)
    }
}

/// A TLS 1.3 session's records after the handshake.
pub(super) struct Records {
    /// rustls' key schedule, for key updates.
    kernel: KernelConnection<ServerConnectionData>,
    pub(super) tx: Keys,
    rx: Keys,
    /// Records we may seal under one key before updating it (§5.5).
    pub(super) tx_limit: u64,
    /// We sent an alert (close_notify or fatal): nothing more goes out, not even a
    /// requested KeyUpdate.
    closed: bool,
}

/// What one `open` did.
#[derive(Debug)]
pub(super) struct Opened {
    /// Bytes of whole records taken from the front of the buffer (the rest is a partial
    /// record, or follows close_notify).
    pub used: usize,
    /// The peer sent close_notify.
    pub peer_closed: bool,
}

impl Records {
    pub(super) fn new(
        secrets: ExtractedSecrets,
        kernel: KernelConnection<ServerConnectionData>,
    ) -> Result<Self, Fatal> {
        let tx_limit = match kernel.negotiated_cipher_suite() {
            SupportedCipherSuite::Tls13(suite) => suite.common.confidentiality_limit,
            SupportedCipherSuite::Tls12(_) => {
                return Err(fatal(
                    alert::INTERNAL_ERROR,
                    "TLS 1.2 keeps rustls' records",
                ))
            }
        };
        Ok(Self {
            kernel,
            tx: Keys::new(secrets.tx)?,
            rx: Keys::new(secrets.rx)?,
            tx_limit,
            closed: false,
        })
    }

    /// Starts loading what sealing reads: the sending keys and their counters.
    pub(super) fn prefetch_tx(&self) {
        crate::sys::prefetch(&self.tx);
        crate::sys::prefetch(&self.tx_limit);
    }

    /// Seals `len` bytes of application data, taken from `data` in order, as records of up
    /// to 2^14 bytes appended to `out`.
    pub(super) fn seal_data<'a>(
        &mut self,
        out: &mut Vec<u8>,
        mut data: impl Iterator<Item = &'a [u8]>,
        len: usize,
    ) -> Result<(), Fatal> {
        let mut front: &[u8] = &[];
        let mut left = len;
        while left > 0 {
            let n = left.min(MAX_PLAINTEXT);
            left -= n;
            self.seal(out, APPLICATION_DATA, |out| {
                let mut need = n;
                while need > 0 {
                    if front.is_empty() {
                        // An empty frame has nothing to give; the end of the data ends
                        // the record (it cannot come before `len` bytes).
                        match data.by_ref().find(|frame| !frame.is_empty()) {
                            Some(frame) => front = frame,
                            None => break,
                        }
                    }
                    let take = front.len().min(need);
                    out.extend_from_slice(&front[..take]);
                    front = &front[take..];
                    need -= take;
                }
            })?;
        }
        Ok(())
    }

    /// An alert record (close_notify is a warning, everything else fatal: §6), or none
    /// once we have said our last word (an alert, close_notify included, ends what we
    /// send).
    pub(super) fn alert(&mut self, description: u8) -> Option<Vec<u8>> {
        if std::mem::replace(&mut self.closed, true) {
            return None;
        }
        let level = if description == alert::CLOSE_NOTIFY {
            1
        } else {
            2
        };
        let mut out = Vec::with_capacity(2 + OVERHEAD);
        let sealed = self.seal(&mut out, ALERT, |out| {
            out.extend_from_slice(&[level, description])
        });
        sealed.ok().map(|()| out)
    }

    /// Appends one record of `content_type` whose plaintext `fill` appends (at most 2^14
    /// bytes). Updates our keys first when only the KeyUpdate itself may still be sealed
    /// under this key: no key seals more than `tx_limit` records.
    fn seal(
        &mut self,
        out: &mut Vec<u8>,
        content_type: u8,
        fill: impl FnOnce(&mut Vec<u8>),
    ) -> Result<(), Fatal> {
        if self.tx.seq + 1 >= self.tx_limit {
            self.update_tx(out)?;
        }
        self.seal_with_current_key(out, content_type, fill);
        Ok(())
    }

    fn seal_with_current_key(
        &mut self,
        out: &mut Vec<u8>,
        content_type: u8,
        fill: impl FnOnce(&mut Vec<u8>),
    ) {
        let start = out.len();
        out.extend_from_slice(&[APPLICATION_DATA, 3, 3, 0, 0]);
        fill(out);
        out.push(content_type);
        let length = out.len() - start - HEADER + TAG;
        debug_assert!(length <= MAX_PLAINTEXT + 1 + TAG);
        out[start + 3..start + HEADER].copy_from_slice(&(length as u16).to_be_bytes());
        let (header, body) = out[start..].split_at_mut(HEADER);
        let nonce = self.tx.next_nonce();
        let tag = self
            .tx
            .key
            .seal_in_place_separate_tag(nonce, Aad::from(&*header), body)
            .expect("AEAD sealing fails only past its length limit, far above 2^14");
        out.extend_from_slice(tag.as_ref());
    }

    /// Sends a KeyUpdate under the old key, then seals under the new one (§4.6.3).
    fn update_tx(&mut self, out: &mut Vec<u8>) -> Result<(), Fatal> {
        let secrets = (self.kernel.update_tx_secret()).map_err(|e| {
            fatal(
                alert::INTERNAL_ERROR,
                format!("cannot update our keys: {e}"),
            )
        })?;
        let keys = Keys::new(secrets)?;
        self.seal_with_current_key(out, HANDSHAKE, |out| {
            out.extend_from_slice(&[KEY_UPDATE, 0, 0, 1, 0]) // update_not_requested
        });
        self.tx = keys;
        Ok(())
    }

    /// Opens the whole records at the front of `buf` in place, appending their application
    /// data to `plain`; what we must answer (a KeyUpdate) goes to `wire`. On a fatal error
    /// the alert to send is in the error, and nothing after the bad record counts.
    pub(super) fn open(
        &mut self,
        buf: &mut [u8],
        plain: &mut Vec<u8>,
        wire: &mut OutQueue,
    ) -> Result<Opened, Fatal> {
        let mut used = 0;
        while let Some(header) = buf.get(used..used + HEADER) {
            let length = usize::from(u16::from_be_bytes([header[3], header[4]]));
            if header[0] != APPLICATION_DATA {
                return Err(fatal(
                    alert::UNEXPECTED_MESSAGE,
                    format!("a record of type {} after the handshake", header[0]),
                ));
            }
            if length > MAX_CIPHERTEXT {
                return Err(fatal(
                    alert::RECORD_OVERFLOW,
                    format!("a record of {length} bytes"),
                ));
            }
            let Some(record) = buf.get_mut(used..used + HEADER + length) else {
                break; // its rest has not arrived
            };
            used += HEADER + length;
            let (header, body) = record.split_at_mut(HEADER);
            let nonce = self.rx.next_nonce();
            let inner = self
                .rx
                .key
                .open_in_place(nonce, Aad::from(&*header), body)
                .map_err(|_| fatal(alert::BAD_RECORD_MAC, "a record that does not authenticate"))?;
            // The content type is the last byte that is not padding (§5.4).
            let Some(end) = inner.iter().rposition(|&b| b != 0) else {
                return Err(fatal(
                    alert::UNEXPECTED_MESSAGE,
                    "a record with no content type",
                ));
            };
            if end > MAX_PLAINTEXT {
                return Err(fatal(
                    alert::RECORD_OVERFLOW,
                    format!("{end} bytes of plaintext in a record"),
                ));
            }
            let content = &inner[..end];
            match inner[end] {
                APPLICATION_DATA => plain.extend_from_slice(content),
                ALERT => match content {
                    [_, alert::CLOSE_NOTIFY] => {
                        // Nothing after close_notify counts (§6.1).
                        return Ok(Opened {
                            used: buf.len(),
                            peer_closed: true,
                        });
                    }
                    [_, alert::USER_CANCELED] => {}
                    [_, description] => {
                        return Err(Fatal {
                            alert: None,
                            reason: format!("the peer's alert {description}"),
                        })
                    }
                    _ => return Err(fatal(alert::DECODE_ERROR, "an alert that is not 2 bytes")),
                },
                HANDSHAKE => self.handshake(content, wire)?,
                other => {
                    return Err(fatal(
                        alert::UNEXPECTED_MESSAGE,
                        format!("inner content type {other}"),
                    ))
                }
            }
        }
        Ok(Opened {
            used,
            peer_closed: false,
        })
    }

    /// Handshake messages after the handshake: a client may only update its keys.
    fn handshake(&mut self, mut content: &[u8], wire: &mut OutQueue) -> Result<(), Fatal> {
        if content.is_empty() {
            return Err(fatal(
                alert::UNEXPECTED_MESSAGE,
                "an empty handshake record",
            ));
        }
        while let [kind, a, b, c, rest @ ..] = content {
            let length = u32::from_be_bytes([0, *a, *b, *c]) as usize;
            let Some((body, rest)) = (rest.len() >= length).then(|| rest.split_at(length)) else {
                // rustls would join a message split across records; no client splits a
                // 5-byte KeyUpdate, and no other message is allowed here.
                return Err(fatal(
                    alert::UNEXPECTED_MESSAGE,
                    "a handshake message split across records",
                ));
            };
            if *kind != KEY_UPDATE {
                return Err(fatal(
                    alert::UNEXPECTED_MESSAGE,
                    format!("handshake message {kind} after the handshake"),
                ));
            }
            let &[request] = body else {
                return Err(fatal(alert::DECODE_ERROR, "a KeyUpdate that is not 1 byte"));
            };
            if request > 1 {
                return Err(fatal(
                    alert::ILLEGAL_PARAMETER,
                    format!("KeyUpdate request {request}"),
                ));
            }
            // A key change must end its record (§5.1).
            if !rest.is_empty() {
                return Err(fatal(
                    alert::UNEXPECTED_MESSAGE,
                    "data after a KeyUpdate in its record",
                ));
            }
            let secrets = (self.kernel.update_rx_secret())
                .map_err(|e| fatal(alert::INTERNAL_ERROR, e.to_string()))?;
            self.rx = Keys::new(secrets)?;
            if request == 1 && !self.closed {
                // update_requested: answer with ours before any more data.
                let mut out = Vec::with_capacity(5 + OVERHEAD);
                self.update_tx(&mut out)?;
                wire.push(out.into());
            }
            content = rest;
        }
        if content.is_empty() {
            Ok(())
        } else {
            Err(fatal(
                alert::DECODE_ERROR,
                "a truncated handshake message header",
            ))
        }
    }
}
