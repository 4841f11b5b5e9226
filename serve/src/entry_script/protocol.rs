//! The channel between the scoring server and an entry-script worker: one Unix stream socket
//! per worker, carrying length-prefixed frames both ways.
//!
//! ```text
//! frame = u32 LE length of the rest | u8 kind | u32 LE metadata length | metadata | payload
//! ```
//!
//! The metadata is a small JSON object (a few hundred bytes: what the worker needs to rebuild
//! the WSGI request, or the status and headers of an answer); the payload is the request or
//! response body, untouched. The server sends `CALL` (one request) and `ECHO` (answered with
//! the same frame: the hop's cost, and a liveness check); the worker sends `READY` once after
//! init(), `RESPONSE` per call, `LOG` for each line the script writes, and `FATAL` when the
//! script cannot be imported or its init() fails, just before it exits. A worker serves one
//! call at a time, so answers need no matching beyond the `seq` they echo.
//!
//! Written by hand rather than with a serialisation crate: the Python side must read it with
//! nothing but the standard library, and JSON metadata plus raw bytes is what both sides
//! already do fastest.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Frame kinds; the values are the wire's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameKind {
    Call = 1,
    Echo = 2,
    Ready = 16,
    Response = 17,
    Log = 18,
    Fatal = 19,
}

impl FrameKind {
    fn from_byte(byte: u8) -> Option<FrameKind> {
        Some(match byte {
            1 => FrameKind::Call,
            2 => FrameKind::Echo,
            16 => FrameKind::Ready,
            17 => FrameKind::Response,
            18 => FrameKind::Log,
            19 => FrameKind::Fatal,
            _ => return None,
        })
    }
}

/// The largest frame a worker may send: a response body past this is a broken worker, and
/// reading it would cost the server its memory.
pub const MAX_FRAME_BYTES: usize = 1 << 30;

#[derive(Debug, Clone, PartialEq)]
pub struct Frame {
    pub kind: FrameKind,
    pub meta: Vec<u8>,
    pub payload: Vec<u8>,
}

#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    #[error("the worker closed its socket")]
    Closed,
    #[error("reading from the worker: {0}")]
    Io(#[from] std::io::Error),
    #[error("malformed frame from the worker: {0}")]
    Malformed(String),
}

impl Frame {
    pub fn new(kind: FrameKind, meta: &impl Serialize, payload: Vec<u8>) -> Frame {
        Frame {
            kind,
            meta: serde_json::to_vec(meta).expect("metadata serialises"),
            payload,
        }
    }

    /// The metadata, parsed as `T`.
    pub fn meta<T: for<'a> Deserialize<'a>>(&self) -> Result<T, ProtocolError> {
        serde_json::from_slice(&self.meta)
            .map_err(|e| ProtocolError::Malformed(format!("{:?} frame metadata: {e}", self.kind)))
    }

    /// The whole frame as it goes on the wire.
    pub fn encode(&self) -> Vec<u8> {
        let rest = 1 + 4 + self.meta.len() + self.payload.len();
        let mut out = Vec::with_capacity(4 + rest);
        out.extend_from_slice(&(rest as u32).to_le_bytes());
        out.push(self.kind as u8);
        out.extend_from_slice(&(self.meta.len() as u32).to_le_bytes());
        out.extend_from_slice(&self.meta);
        out.extend_from_slice(&self.payload);
        out
    }

    /// Parses what follows the length prefix.
    pub fn decode(rest: Vec<u8>) -> Result<Frame, ProtocolError> {
        if rest.len() < 5 {
            return Err(ProtocolError::Malformed(format!(
                "a frame of {} bytes is shorter than its header",
                rest.len()
            )));
        }
        let kind = FrameKind::from_byte(rest[0])
            .ok_or_else(|| ProtocolError::Malformed(format!("unknown frame kind {}", rest[0])))?;
        let meta_len = u32::from_le_bytes(rest[1..5].try_into().expect("4 bytes")) as usize;
        if meta_len > rest.len() - 5 {
            return Err(ProtocolError::Malformed(format!(
                "metadata of {meta_len} bytes in a frame of {}",
                rest.len()
            )));
        }
        let mut payload = rest;
        let meta = payload[5..5 + meta_len].to_vec();
        payload.drain(..5 + meta_len);
        Ok(Frame {
            kind,
            meta,
            payload,
        })
    }

    pub async fn write_to(&self, writer: &mut (impl AsyncWrite + Unpin)) -> std::io::Result<()> {
        writer.write_all(&self.encode()).await?;
        writer.flush().await
    }

    /// Reads one frame; [`ProtocolError::Closed`] when the stream ends between frames.
    pub async fn read_from(reader: &mut (impl AsyncRead + Unpin)) -> Result<Frame, ProtocolError> {
        let mut length = [0u8; 4];
        match reader.read_exact(&mut length).await {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                return Err(ProtocolError::Closed);
            }
            Err(e) => return Err(e.into()),
        }
        let length = u32::from_le_bytes(length) as usize;
        if length > MAX_FRAME_BYTES {
            return Err(ProtocolError::Malformed(format!(
                "a frame of {length} bytes is over the {MAX_FRAME_BYTES}-byte limit"
            )));
        }
        let mut rest = vec![0u8; length];
        reader.read_exact(&mut rest).await?;
        Frame::decode(rest)
    }
}

/// `CALL`: one HTTP request, as the worker rebuilds it for the script.
#[derive(Debug, Serialize)]
pub struct CallMeta<'a> {
    pub seq: u64,
    /// The request id the script's log lines are tagged with.
    pub id: &'a str,
    pub method: &'a str,
    pub path: &'a str,
    pub query: &'a str,
    pub headers: Vec<(&'a str, &'a str)>,
    pub host: &'a str,
    pub port: u16,
    pub scheme: &'a str,
    pub peer: String,
}

/// `RESPONSE`: the answer to the call with the same `seq`.
#[derive(Debug, Deserialize)]
pub struct ResponseMeta {
    pub seq: u64,
    pub status: u16,
    pub headers: Vec<(String, String)>,
}

/// `LOG`: one or more whole lines the script wrote.
#[derive(Debug, Deserialize)]
pub struct LogMeta {
    pub stream: String,
    pub request_id: Option<String>,
}

/// `READY`: init() returned; what `GET /swagger.json` answers for this script.
#[derive(Debug, Deserialize)]
pub struct ReadyMeta {
    pub pid: u32,
    pub swagger: SwaggerDocuments,
}

/// Azure's swagger documents per version alias (`2`, `2.0`, `3`, `3.0`, `3.1`), the message
/// for an alias the script's schema cannot be described in, and the versions it can.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct SwaggerDocuments {
    pub documents: std::collections::BTreeMap<String, Value>,
    pub errors: std::collections::BTreeMap<String, String>,
    pub supported: Vec<String>,
}

/// `FATAL`: why the worker is exiting before it could serve.
#[derive(Debug, Deserialize)]
pub struct FatalMeta {
    /// `runtime` (the worker's own imports), `import` (the entry script), `init` or `swagger`.
    pub stage: String,
    pub message: String,
    pub traceback: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[tokio::test]
    async fn frames_round_trip_through_a_stream() {
        let frame = Frame::new(
            FrameKind::Call,
            &serde_json::json!({"seq": 7}),
            b"{\"data\": [1]}".to_vec(),
        );
        let (mut a, mut b) = tokio::io::duplex(1024);
        frame.write_to(&mut a).await.unwrap();
        drop(a);
        let read = Frame::read_from(&mut b).await.unwrap();
        assert_eq!(read, frame);
        assert!(matches!(
            Frame::read_from(&mut b).await,
            Err(ProtocolError::Closed)
        ));
    }

    #[tokio::test]
    async fn an_oversized_length_is_refused_before_it_is_read() {
        let (mut a, mut b) = tokio::io::duplex(64);
        a.write_all(&u32::MAX.to_le_bytes()).await.unwrap();
        let error = Frame::read_from(&mut b).await.unwrap_err();
        assert!(error.to_string().contains("over the"), "{error}");
    }

    #[test]
    fn metadata_longer_than_its_frame_is_malformed() {
        let mut rest = vec![FrameKind::Response as u8];
        rest.extend_from_slice(&100u32.to_le_bytes());
        rest.extend_from_slice(b"{}");
        assert!(matches!(
            Frame::decode(rest),
            Err(ProtocolError::Malformed(_))
        ));
    }

    proptest! {
        /// Whatever bytes a broken worker sends, decoding answers a frame or an error.
        #[test]
        fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = Frame::decode(bytes);
        }

        #[test]
        fn encode_then_decode_is_identity(kind in prop::sample::select(vec![FrameKind::Call, FrameKind::Echo, FrameKind::Ready, FrameKind::Response, FrameKind::Log, FrameKind::Fatal]),
                                           meta in proptest::collection::vec(any::<u8>(), 0..32),
                                           payload in proptest::collection::vec(any::<u8>(), 0..64)) {
            let frame = Frame { kind, meta, payload };
            let wire = frame.encode();
            prop_assert_eq!(u32::from_le_bytes(wire[..4].try_into().unwrap()) as usize, wire.len() - 4);
            prop_assert_eq!(Frame::decode(wire[4..].to_vec()).unwrap(), frame);
        }
    }
}
