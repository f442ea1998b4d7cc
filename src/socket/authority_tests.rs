//! The :authority repair on hand-made HTTP/2 byte streams, decoded again with a fresh HPACK
//! decoder, as h2 would see them.

use super::*;
use tokio::io::AsyncReadExt;

const PATH: &str = "/var/lib/kubelet/plugins_registry/local.pvdir.io-reg.sock";

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    frame_header(&mut out, payload.len(), kind, flags, stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

fn literal(out: &mut Vec<u8>, first: u8, value: &[u8]) {
    out.push(first);
    encode_integer(out, 0, 7, value.len());
    out.extend_from_slice(value);
}

/// A request block as grpcio sends it: `:authority` as a literal with incremental indexing
/// (static name index 1), so that the next request refers to it in the dynamic table.
fn request_block(authority: &str) -> Vec<u8> {
    let mut b = vec![0x83, 0x86]; // :method POST, :scheme http
    literal(&mut b, 0x44, b"/csi.v1.Identity/Probe"); // :path, indexed
    literal(&mut b, 0x41, authority.as_bytes()); // :authority, indexed
    b
}

/// The same request again, its :authority now index 62 (the newest dynamic entry) and :path
/// index 63.
fn repeated_block() -> Vec<u8> {
    vec![0x83, 0x86, 0x80 | 63, 0x80 | 62]
}

fn settings() -> Vec<u8> {
    frame(0x4, 0, 0, &[])
}

async fn through(input: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    AuthorityFix::new(input)
        .read_to_end(&mut out)
        .await
        .unwrap();
    out
}

/// A reader that hands out one byte per read: every frame arrives split everywhere.
struct Trickle<'a>(&'a [u8]);

impl AsyncRead for Trickle<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if let Some((first, rest)) = self.0.split_first() {
            buf.put_slice(&[*first]);
            self.0 = rest;
        }
        Poll::Ready(Ok(()))
    }
}

/// The header blocks of a client byte stream, decoded in order by one decoder.
fn decoded_blocks(bytes: &[u8]) -> Vec<Vec<(String, String)>> {
    assert_eq!(&bytes[..24], PREFACE);
    let mut decoder = loona_hpack::Decoder::new();
    let mut blocks = Vec::new();
    let mut block = Vec::new();
    let mut rest = &bytes[24..];
    while !rest.is_empty() {
        let len = usize::from(rest[0]) << 16 | usize::from(rest[1]) << 8 | usize::from(rest[2]);
        let (kind, flags) = (rest[3], rest[4]);
        let payload = &rest[9..9 + len];
        if kind == HEADERS {
            let (_, fragment) = split_headers(flags, payload).unwrap();
            block.extend_from_slice(fragment);
        } else if kind == CONTINUATION {
            block.extend_from_slice(payload);
        }
        if (kind == HEADERS || kind == CONTINUATION) && flags & END_HEADERS != 0 {
            let fields = decoder.decode(&block).unwrap();
            blocks.push(
                fields
                    .into_iter()
                    .map(|(n, v)| (String::from_utf8(n).unwrap(), String::from_utf8(v).unwrap()))
                    .collect(),
            );
            block.clear();
        }
        rest = &rest[9 + len..];
    }
    blocks
}

fn authorities(bytes: &[u8]) -> Vec<String> {
    decoded_blocks(bytes)
        .into_iter()
        .map(|b| b.into_iter().find(|(n, _)| n == ":authority").unwrap().1)
        .collect()
}

fn client_stream(blocks: &[Vec<u8>]) -> Vec<u8> {
    let mut input = PREFACE.to_vec();
    input.extend(settings());
    for (i, block) in blocks.iter().enumerate() {
        let stream = 1 + 2 * i as u32;
        input.extend(frame(HEADERS, END_HEADERS, stream, block));
        input.extend(frame(0x0, END_STREAM, stream, b"\0\0\0\0\0"));
    }
    input
}

#[tokio::test]
async fn a_valid_authority_passes_byte_for_byte() {
    let input = client_stream(&[request_block("localhost"), repeated_block()]);
    assert_eq!(through(&input).await, input);
}

#[tokio::test]
async fn after_a_valid_first_block_nothing_more_is_looked_at() {
    // The adapter stepped aside: even a socket path later on passes as it came.
    let input = client_stream(&[request_block("localhost"), request_block(PATH)]);
    assert_eq!(through(&input).await, input);
}

#[tokio::test]
async fn a_socket_path_becomes_localhost_and_later_references_follow() {
    let input = client_stream(&[request_block(PATH), repeated_block()]);
    let out = through(&input).await;
    assert_eq!(authorities(&out), ["localhost", "localhost"]);
    // Everything else is the client's request as it was.
    let blocks = decoded_blocks(&out);
    assert_eq!(
        blocks[1][2],
        (":path".into(), "/csi.v1.Identity/Probe".into())
    );
    assert_eq!(blocks[0].len(), 4);
}

#[tokio::test]
async fn frames_split_across_reads_give_the_same_bytes() {
    let input = client_stream(&[request_block(PATH), repeated_block()]);
    let mut trickled = Vec::new();
    AuthorityFix::new(Trickle(&input))
        .read_to_end(&mut trickled)
        .await
        .unwrap();
    assert_eq!(trickled, through(&input).await);
}

#[tokio::test]
async fn padding_priority_and_continuation_are_followed() {
    let block = request_block(PATH);
    let (a, b) = block.split_at(5);
    let mut headers = vec![3]; // pad length
    headers.extend([0, 0, 0, 0, 16]); // priority: no dependency, weight 16
    headers.extend(a);
    headers.extend([0, 0, 0]);
    let mut input = PREFACE.to_vec();
    input.extend(frame(HEADERS, PADDED | PRIORITY | END_STREAM, 1, &headers));
    input.extend(frame(CONTINUATION, END_HEADERS, 1, b));
    let out = through(&input).await;
    assert_eq!(authorities(&out), ["localhost"]);
    let first = &out[24..];
    assert_eq!(first[3], HEADERS);
    assert_eq!(
        first[4],
        END_STREAM | PRIORITY | END_HEADERS,
        "padding dropped, rest kept"
    );
    assert_eq!(&first[9..14], &[0, 0, 0, 0, 16]);
}

#[tokio::test]
async fn a_big_block_is_split_into_continuations_h2_accepts() {
    let mut block = request_block(PATH);
    for i in 0..40 {
        literal(&mut block, 0x40, format!("x-filler-{i}").as_bytes());
        encode_integer(&mut block, 0, 7, 1000);
        block.extend(std::iter::repeat_n(b'v', 1000));
    }
    let out = through(&client_stream(&[block])).await;
    assert_eq!(authorities(&out), ["localhost"]);
    let mut rest = &out[24 + 9..]; // after the preface and SETTINGS
    let mut kinds = Vec::new();
    while !rest.is_empty() {
        let len = usize::from(rest[0]) << 16 | usize::from(rest[1]) << 8 | usize::from(rest[2]);
        assert!(len <= MAX_FRAME);
        kinds.push(rest[3]);
        rest = &rest[9 + len..];
    }
    assert_eq!(kinds, [HEADERS, CONTINUATION, CONTINUATION, 0x0]);
}

#[tokio::test]
async fn what_is_not_http2_or_does_not_decode_passes_unchanged() {
    let text = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n".to_vec();
    assert_eq!(through(&text).await, text);
    // Index 99 is in no table: h2 must see the same broken block and fail the connection.
    let broken = client_stream(&[vec![0x80 | 99], request_block(PATH)]);
    assert_eq!(through(&broken).await, broken);
}

#[tokio::test]
async fn an_interleaved_frame_makes_it_step_aside() {
    let block = request_block(PATH);
    let mut input = PREFACE.to_vec();
    input.extend(frame(HEADERS, 0, 1, &block));
    input.extend(settings());
    input.extend(frame(CONTINUATION, END_HEADERS, 1, &[]));
    assert_eq!(through(&input).await, input);
}

#[tokio::test]
async fn a_truncated_stream_is_passed_on_as_it_ended() {
    let input = client_stream(&[request_block(PATH)]);
    let cut = &input[..input.len() - 20];
    assert_eq!(through(cut).await, cut);
}

#[test]
fn integers_use_their_prefix_and_continuation_bytes() {
    let mut out = Vec::new();
    encode_integer(&mut out, 0, 5, 10);
    encode_integer(&mut out, 0, 5, 1337);
    assert_eq!(out, [10, 31, 154, 10], "RFC 7541 C.1.1 and C.1.2");
}
