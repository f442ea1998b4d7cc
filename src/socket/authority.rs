//! Accepting gRPC clients that send a unix socket's path as the HTTP/2 `:authority`.
//!
//! kubelet's plugin-registration client, grpcio, grpc-java and older grpcurl dial a unix socket
//! and send its path (`/var/lib/kubelet/plugins_registry/x-reg.sock`) as `:authority`. That is
//! no valid authority, and the h2 crate under tonic answers every such stream with RST_STREAM
//! PROTOCOL_ERROR (hyperium/h2#487, open for years): kubelet could never register pvdir. On a
//! unix socket the authority names nothing, so [`AuthorityFix`] sits between the socket and h2
//! and, in the client's header blocks only, replaces an `:authority` that h2 would refuse with
//! `localhost`, what Go clients send.
//!
//! Invariants:
//! - the connection's first header block decides. If its `:authority` is fine, the adapter
//!   steps aside and the connection passes byte for byte (a gRPC channel keeps one authority).
//!   If it was replaced, every header block of that connection is re-encoded from then on,
//!   since h2's HPACK table no longer holds what the client's encoder assumes; re-encoded
//!   blocks never index, so h2's table stops mattering.
//! - what it cannot follow (not HTTP/2, a header block that does not decode, frames out of
//!   order, a block over [`MAX_BLOCK`]) goes on as it came and the adapter steps aside for the
//!   rest of the connection: h2 then answers it exactly as it would have.
//! - the server's bytes to the client are never touched.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const FRAME_HEADER: usize = 9;
const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;
/// The frame size every HTTP/2 peer must accept (SETTINGS_MAX_FRAME_SIZE's initial value; h2
/// under tonic keeps it).
const MAX_FRAME: usize = 16_384;
/// Largest header block followed; h2's own header-list limit refuses bigger ones anyway.
pub const MAX_BLOCK: usize = 256 * 1024;
/// What h2 allows the client's HPACK table to grow to (SETTINGS_HEADER_TABLE_SIZE's default).
const TABLE_SIZE: usize = 4096;

enum Mode {
    Preface,
    Frames,
    /// Stepped aside: everything goes on as it came.
    Passthrough,
}

/// A header block still waiting for its CONTINUATION frames.
struct Pending {
    stream: [u8; 4],
    end_stream: bool,
    priority: Option<[u8; 5]>,
    block: Vec<u8>,
    /// The frames as they came, for stepping aside.
    raw: Vec<u8>,
}

pub struct AuthorityFix<S> {
    inner: S,
    /// Read from the client, not yet looked at.
    input: Vec<u8>,
    /// Ready for h2.
    output: Vec<u8>,
    output_pos: usize,
    mode: Mode,
    /// Payload bytes of a frame that passes through as it is.
    skip: usize,
    pending: Option<Pending>,
    decoder: loona_hpack::Decoder<'static>,
    rewriting: bool,
    eof: bool,
}

impl<S> AuthorityFix<S> {
    pub fn new(inner: S) -> Self {
        let mut decoder = loona_hpack::Decoder::new();
        decoder.set_max_allowed_table_size(TABLE_SIZE);
        Self {
            inner,
            input: Vec::new(),
            output: Vec::new(),
            output_pos: 0,
            mode: Mode::Preface,
            skip: 0,
            pending: None,
            decoder,
            rewriting: false,
            eof: false,
        }
    }

    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// Move `n` bytes of input to the output as they are.
    fn pass(&mut self, n: usize) {
        self.output.extend(self.input.drain(..n));
    }

    fn step_aside(&mut self) {
        if let Some(pending) = self.pending.take() {
            self.output.extend(pending.raw);
        }
        self.skip = 0;
        self.mode = Mode::Passthrough;
    }

    /// Look at what has been read so far, moving what is settled to the output.
    fn process(&mut self) {
        loop {
            match self.mode {
                Mode::Passthrough => {
                    self.pass(self.input.len());
                    return;
                }
                Mode::Preface => {
                    let n = self.input.len().min(PREFACE.len());
                    if self.input[..n] != PREFACE[..n] {
                        self.mode = Mode::Passthrough;
                    } else if n == PREFACE.len() {
                        self.pass(n);
                        self.mode = Mode::Frames;
                    } else {
                        return;
                    }
                }
                Mode::Frames => {
                    if self.skip > 0 {
                        let n = self.skip.min(self.input.len());
                        self.pass(n);
                        self.skip -= n;
                        if self.skip > 0 {
                            return;
                        }
                        continue;
                    }
                    if self.input.len() < FRAME_HEADER {
                        return;
                    }
                    let len = usize::from(self.input[0]) << 16
                        | usize::from(self.input[1]) << 8
                        | usize::from(self.input[2]);
                    let kind = self.input[3];
                    if kind != HEADERS && kind != CONTINUATION {
                        if self.pending.is_some() {
                            // A header block must not be interleaved: h2 says so.
                            self.step_aside();
                            continue;
                        }
                        self.pass(FRAME_HEADER);
                        self.skip = len;
                        continue;
                    }
                    let held = self.pending.as_ref().map_or(0, |p| p.block.len());
                    if held + len > MAX_BLOCK {
                        self.step_aside();
                        continue;
                    }
                    if self.input.len() < FRAME_HEADER + len {
                        return;
                    }
                    let frame: Vec<u8> = self.input.drain(..FRAME_HEADER + len).collect();
                    self.header_frame(frame);
                }
            }
        }
    }

    fn header_frame(&mut self, frame: Vec<u8>) {
        let kind = frame[3];
        let flags = frame[4];
        let stream: [u8; 4] = [frame[5], frame[6], frame[7], frame[8]];
        let payload = &frame[FRAME_HEADER..];
        match (kind, self.pending.as_mut()) {
            (HEADERS, None) => {
                let Some((priority, fragment)) = split_headers(flags, payload) else {
                    self.output.extend(&frame);
                    return self.step_aside();
                };
                self.pending = Some(Pending {
                    stream,
                    end_stream: flags & END_STREAM != 0,
                    priority,
                    block: fragment.to_vec(),
                    raw: Vec::new(),
                });
            }
            (CONTINUATION, Some(pending)) if pending.stream == stream => {
                pending.block.extend_from_slice(payload);
            }
            // Out of order: h2 refuses it, with the right error.
            _ => {
                self.step_aside();
                self.output.extend(&frame);
                return;
            }
        }
        if let Some(pending) = self.pending.as_mut() {
            pending.raw.extend_from_slice(&frame);
        }
        if flags & END_HEADERS != 0 {
            if let Some(pending) = self.pending.take() {
                self.finish(pending);
            }
        }
    }

    fn finish(&mut self, pending: Pending) {
        let Ok(mut headers) = self.decoder.decode(&pending.block) else {
            // h2 fails the connection on it, as it should.
            self.output.extend(pending.raw);
            return self.step_aside();
        };
        let mut replaced = false;
        for (name, value) in headers.iter_mut() {
            if name.as_slice() == b":authority"
                && http::uri::Authority::try_from(&value[..]).is_err()
            {
                *value = b"localhost".to_vec();
                replaced = true;
            }
        }
        if !replaced && !self.rewriting {
            // A client whose first request is fine is left alone from here on: a gRPC channel
            // sends one authority for all its calls, and decoding every block (Go clients
            // Huffman-code them) cost a sixth of the driver's CPU per call.
            self.output.extend(pending.raw);
            return self.step_aside();
        }
        self.rewriting = true;
        let block = encode_without_indexing(&headers);
        write_header_frames(&mut self.output, &pending, &block);
    }
}

/// (priority fields, header block fragment) of a HEADERS payload; `None` if the padding is
/// longer than the frame.
fn split_headers(flags: u8, payload: &[u8]) -> Option<(Option<[u8; 5]>, &[u8])> {
    let (pad, mut rest) = match flags & PADDED != 0 {
        true => (usize::from(*payload.first()?), payload.get(1..)?),
        false => (0, payload),
    };
    let priority = match flags & PRIORITY != 0 {
        true => {
            let fields: [u8; 5] = rest.get(..5)?.try_into().ok()?;
            rest = &rest[5..];
            Some(fields)
        }
        false => None,
    };
    let end = rest.len().checked_sub(pad)?;
    Some((priority, &rest[..end]))
}

/// An HPACK integer with an `n`-bit prefix (RFC 7541, 5.1) after the bits in `first`.
fn encode_integer(out: &mut Vec<u8>, first: u8, n: u32, value: usize) {
    let max = (1usize << n) - 1;
    if value < max {
        out.push(first | value as u8);
        return;
    }
    out.push(first | max as u8);
    let mut rest = value - max;
    while rest >= 128 {
        out.push((rest % 128) as u8 | 0x80);
        rest /= 128;
    }
    out.push(rest as u8);
}

/// Every field as "literal header field without indexing, new name" (RFC 7541, 6.2.2), plain
/// strings: nothing enters the receiver's table.
fn encode_without_indexing(headers: &[(Vec<u8>, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in headers {
        out.push(0x00);
        for s in [name, value] {
            encode_integer(&mut out, 0x00, 7, s.len());
            out.extend_from_slice(s);
        }
    }
    out
}

/// The block as a HEADERS frame and as many CONTINUATION frames as it needs, none larger than
/// [`MAX_FRAME`]. Padding is dropped; END_STREAM and the priority fields are kept.
fn write_header_frames(out: &mut Vec<u8>, pending: &Pending, block: &[u8]) {
    let first_room = MAX_FRAME - pending.priority.map_or(0, |p| p.len());
    let (first, mut rest) = block.split_at(block.len().min(first_room));
    let mut flags = 0;
    if pending.end_stream {
        flags |= END_STREAM;
    }
    if pending.priority.is_some() {
        flags |= PRIORITY;
    }
    if rest.is_empty() {
        flags |= END_HEADERS;
    }
    let priority = pending.priority.as_ref().map_or(&[][..], |p| &p[..]);
    frame_header(
        out,
        priority.len() + first.len(),
        HEADERS,
        flags,
        pending.stream,
    );
    out.extend_from_slice(priority);
    out.extend_from_slice(first);
    while !rest.is_empty() {
        let (chunk, after) = rest.split_at(rest.len().min(MAX_FRAME));
        let flags = if after.is_empty() { END_HEADERS } else { 0 };
        frame_header(out, chunk.len(), CONTINUATION, flags, pending.stream);
        out.extend_from_slice(chunk);
        rest = after;
    }
}

fn frame_header(out: &mut Vec<u8>, len: usize, kind: u8, flags: u8, stream: [u8; 4]) {
    out.extend_from_slice(&[(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags]);
    out.extend_from_slice(&stream);
}

impl<S: AsyncRead + Unpin> AsyncRead for AuthorityFix<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if this.output_pos < this.output.len() {
                let n = buf.remaining().min(this.output.len() - this.output_pos);
                buf.put_slice(&this.output[this.output_pos..this.output_pos + n]);
                this.output_pos += n;
                if this.output_pos == this.output.len() {
                    this.output.clear();
                    this.output_pos = 0;
                }
                return Poll::Ready(Ok(()));
            }
            if this.eof {
                // What was left unfinished goes on as it is: h2 sees the same truncation.
                if let Some(pending) = this.pending.take() {
                    this.output.extend(pending.raw);
                }
                this.output.append(&mut this.input);
                if this.output.is_empty() {
                    return Poll::Ready(Ok(()));
                }
                continue;
            }
            let mut chunk = [0u8; 16 * 1024];
            let mut read = ReadBuf::new(&mut chunk);
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut read))?;
            if read.filled().is_empty() {
                this.eof = true;
            } else {
                this.input.extend_from_slice(read.filled());
                this.process();
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for AuthorityFix<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

impl<S: tonic::transport::server::Connected> tonic::transport::server::Connected
    for AuthorityFix<S>
{
    type ConnectInfo = S::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

#[cfg(test)]
#[path = "authority_tests.rs"]
mod tests;
