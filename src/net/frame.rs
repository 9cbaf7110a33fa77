//! Size-prefixed Kafka frames: a big-endian i32 length, then that many bytes.
//!
//! The length is checked against `socket.request.max.bytes` before any
//! buffer for the body is allocated.

use bytes::{Bytes, BytesMut};
use futures::{AsyncRead, AsyncReadExt};

/// Bytes requested from the socket per read when the buffer runs dry.
const READ_CHUNK_BYTES: usize = 64 * 1024;

/// Reason a connection's frame stream cannot continue.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("frame length {0} is negative")]
    NegativeLength(i32),
    #[error("frame of {size_bytes} bytes exceeds socket.request.max.bytes {max_bytes}")]
    TooLarge { size_bytes: usize, max_bytes: usize },
    #[error("connection closed in the middle of a frame ({received} of {expected} bytes)")]
    Truncated { received: usize, expected: usize },
    #[error("read failed: {0}")]
    Io(#[from] std::io::Error),
}

/// Reads frames from a byte stream, buffering what arrives past a frame.
pub struct FrameReader<R> {
    reader: R,
    buffer: BytesMut,
    max_frame_bytes: usize,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    pub fn new(reader: R, max_frame_bytes: usize) -> Self {
        FrameReader { reader, buffer: BytesMut::with_capacity(READ_CHUNK_BYTES), max_frame_bytes }
    }

    /// Returns the next frame's body, or None at a clean end of stream.
    pub async fn next_frame(&mut self) -> Result<Option<Bytes>, FrameError> {
        if !self.fill_to(4).await? {
            return if self.buffer.is_empty() {
                Ok(None)
            } else {
                Err(FrameError::Truncated { received: self.buffer.len(), expected: 4 })
            };
        }
        let length = i32::from_be_bytes(self.buffer[..4].try_into().expect("four bytes"));
        if length < 0 {
            return Err(FrameError::NegativeLength(length));
        }
        let length = length as usize;
        if length > self.max_frame_bytes {
            return Err(FrameError::TooLarge { size_bytes: length, max_bytes: self.max_frame_bytes });
        }
        if !self.fill_to(4 + length).await? {
            return Err(FrameError::Truncated { received: self.buffer.len().saturating_sub(4), expected: length });
        }
        let mut frame = self.buffer.split_to(4 + length);
        let _ = frame.split_to(4);
        Ok(Some(frame.freeze()))
    }

    /// Reads until the buffer contains `wanted` bytes. Returns false at end of stream.
    async fn fill_to(&mut self, wanted: usize) -> Result<bool, FrameError> {
        while self.buffer.len() < wanted {
            let start = self.buffer.len();
            let grow = (wanted - start).max(READ_CHUNK_BYTES);
            self.buffer.resize(start + grow, 0);
            let read = self.reader.read(&mut self.buffer[start..]).await;
            let count = match read {
                Ok(count) => count,
                Err(err) => {
                    self.buffer.truncate(start);
                    return Err(err.into());
                }
            };
            self.buffer.truncate(start + count);
            if count == 0 {
                return Ok(false);
            }
        }
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_all(input: Vec<u8>, max: usize) -> Vec<Result<Option<Bytes>, String>> {
        futures::executor::block_on(async move {
            let mut reader = FrameReader::new(futures::io::Cursor::new(input), max);
            let mut out = Vec::new();
            for _ in 0..10 {
                let item = reader.next_frame().await.map_err(|err| err.to_string());
                let stop = !matches!(item, Ok(Some(_)));
                out.push(item);
                if stop {
                    break;
                }
            }
            out
        })
    }

    #[test]
    fn frames_split_at_length_prefix() {
        let mut input = Vec::new();
        input.extend_from_slice(&3i32.to_be_bytes());
        input.extend_from_slice(b"abc");
        input.extend_from_slice(&0i32.to_be_bytes());
        let frames = read_all(input, 100);
        assert_eq!(frames[0], Ok(Some(Bytes::from_static(b"abc"))));
        assert_eq!(frames[1], Ok(Some(Bytes::new())));
        assert_eq!(frames[2], Ok(None));
    }

    #[test]
    fn oversized_frame_is_rejected_before_reading_body() {
        let frames = read_all(1000i32.to_be_bytes().to_vec(), 100);
        assert!(frames[0].as_ref().unwrap_err().contains("exceeds socket.request.max.bytes"));
    }

    #[test]
    fn negative_length_is_rejected() {
        let frames = read_all((-5i32).to_be_bytes().to_vec(), 100);
        assert!(frames[0].as_ref().unwrap_err().contains("negative"));
    }

    #[test]
    fn truncated_frame_is_reported() {
        let mut input = 10i32.to_be_bytes().to_vec();
        input.extend_from_slice(b"abc");
        let frames = read_all(input, 100);
        assert!(frames[0].as_ref().unwrap_err().contains("3 of 10"));
    }
}
