//! A body sent `aws-chunked`: chunks of `size-in-hex[;chunk-signature=sig]`,
//! CRLF, the bytes, CRLF, up to a chunk of size 0 and its trailers. The
//! decoder is fed the body as it arrives and hands back its payload; each
//! chunk's signature, when the request says they are signed, is checked as
//! its bytes end.

use sha2::{Digest as _, Sha256};

use super::sigv4::ChunkSigner;

/// The longest chunk header or trailer line taken.
const MAX_LINE: usize = 4096;

/// Why a chunked body is refused.
#[derive(Debug, thiserror::Error)]
pub(super) enum ChunkError {
    #[error("the aws-chunked body is malformed: {0}")]
    Malformed(&'static str),
    #[error("a chunk's signature does not match")]
    Signature,
}

enum State {
    /// Reading a chunk's header line.
    Header,
    /// Reading a chunk's bytes: how many are left.
    Data(usize),
    /// Reading the CRLF after a chunk's bytes.
    DataEnd,
    /// Reading trailer lines after the last chunk.
    Trailers,
    Done,
}

/// Decodes an `aws-chunked` body.
pub(super) struct Chunked {
    state: State,
    line: Vec<u8>,
    signer: Option<ChunkSigner>,
    signature: String,
    chunk: Sha256Chunk,
}

/// The hash of the chunk being read, for its signature.
#[derive(Default)]
struct Sha256Chunk(Option<Sha256>);

impl Chunked {
    /// A decoder; with a `signer`, each chunk's signature is checked.
    pub(super) fn new(signer: Option<ChunkSigner>) -> Self {
        Self {
            state: State::Header,
            line: Vec::new(),
            signer,
            signature: String::new(),
            chunk: Sha256Chunk::default(),
        }
    }

    /// Decodes the next bytes of the body into `payload`.
    pub(super) fn feed(
        &mut self,
        mut input: &[u8],
        payload: &mut Vec<u8>,
    ) -> Result<(), ChunkError> {
        while !input.is_empty() {
            match self.state {
                State::Header | State::Trailers | State::DataEnd => {
                    let Some(end) = input.iter().position(|&b| b == b'\n') else {
                        self.take_line(input)?;
                        return Ok(());
                    };
                    self.take_line(&input[..end])?;
                    input = &input[end + 1..];
                    let line = std::mem::take(&mut self.line);
                    let line = line.strip_suffix(b"\r").unwrap_or(&line);
                    self.end_line(line)?;
                }
                State::Data(left) => {
                    let n = left.min(input.len());
                    payload.extend_from_slice(&input[..n]);
                    if let Some(hash) = &mut self.chunk.0 {
                        hash.update(&input[..n]);
                    }
                    input = &input[n..];
                    self.state = if n == left {
                        State::DataEnd
                    } else {
                        State::Data(left - n)
                    };
                }
                State::Done => return Err(ChunkError::Malformed("bytes after the last chunk")),
            }
        }
        Ok(())
    }

    fn take_line(&mut self, bytes: &[u8]) -> Result<(), ChunkError> {
        if self.line.len() + bytes.len() > MAX_LINE {
            return Err(ChunkError::Malformed("a line is too long"));
        }
        self.line.extend_from_slice(bytes);
        Ok(())
    }

    fn end_line(&mut self, line: &[u8]) -> Result<(), ChunkError> {
        match self.state {
            State::Header => {
                let line = std::str::from_utf8(line)
                    .map_err(|_| ChunkError::Malformed("a chunk header is not text"))?;
                let (size, extension) = line.split_once(';').unwrap_or((line, ""));
                let size = usize::from_str_radix(size.trim(), 16)
                    .map_err(|_| ChunkError::Malformed("a chunk size is not hex"))?;
                self.signature = extension
                    .trim()
                    .strip_prefix("chunk-signature=")
                    .unwrap_or("")
                    .to_owned();
                if self.signer.is_some() {
                    self.chunk.0 = Some(Sha256::new());
                }
                if size == 0 {
                    self.check_chunk(&Sha256::digest(b"").into())?;
                    self.state = State::Trailers;
                } else {
                    self.state = State::Data(size);
                }
            }
            State::DataEnd => {
                if !line.is_empty() {
                    return Err(ChunkError::Malformed("a chunk is longer than its size"));
                }
                if let Some(hash) = self.chunk.0.take() {
                    self.check_chunk(&hash.finalize().into())?;
                }
                self.state = State::Header;
            }
            State::Trailers if line.is_empty() => self.state = State::Done,
            _ => {}
        }
        Ok(())
    }

    fn check_chunk(&mut self, digest: &[u8; 32]) -> Result<(), ChunkError> {
        match &mut self.signer {
            Some(signer) => signer
                .check_digest(digest, &self.signature)
                .map_err(|_| ChunkError::Signature),
            None => Ok(()),
        }
    }

    /// Checks the body ended after its last chunk.
    pub(super) fn finish(&self) -> Result<(), ChunkError> {
        match self.state {
            State::Done => Ok(()),
            // Some clients end the body right after the last chunk's line.
            State::Trailers if self.line.is_empty() => Ok(()),
            _ => Err(ChunkError::Malformed("the body ends before its last chunk")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(body: &[u8], split: usize) -> Result<Vec<u8>, ChunkError> {
        let mut chunked = Chunked::new(None);
        let mut payload = Vec::new();
        for piece in body.chunks(split) {
            chunked.feed(piece, &mut payload)?;
        }
        chunked.finish()?;
        Ok(payload)
    }

    #[test]
    fn chunks_decode_however_the_body_is_split() {
        let body = b"5\r\nhello\r\n6\r\n world\r\n0\r\nx-amz-checksum-crc32:AAAAAA==\r\n\r\n";
        for split in [1, 2, 3, 7, body.len()] {
            assert_eq!(decode(body, split).unwrap(), b"hello world");
        }
        assert!(decode(b"5\r\nhello world\r\n0\r\n\r\n", 4).is_err());
        assert!(decode(b"5\r\nhel", 4).is_err());
        assert!(decode(b"zz\r\n", 4).is_err());
    }
}
