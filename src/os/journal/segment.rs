//! The journal's on-disk format: one segment file, read and written in 512-byte slots.
//!
//! Slot 0 is the header (magic, epoch); entries follow, each in one or more whole slots: a
//! 32-byte entry header (magic, epoch, lsn, payload length, CRC-32 of all of it) and the
//! payload. A segment's valid entries are the run from slot 1 whose epoch is the header's, whose
//! checksum holds and whose LSNs count up by one; the first slot that breaks the run ends it.
//! Epoch 0 marks a segment that holds nothing.
//!
//! Why whole 512-byte slots: the kernel writes back whole 4 KiB pages, so appending an entry
//! rewrites the page holding earlier, acknowledged entries. A power cut can tear that write,
//! but disks write a 512-byte sector whole, and the earlier sectors are rewritten with the same
//! bytes, so an entry that was acknowledged can never be the one torn.
//! Why re-used, pre-zeroed files: overwriting blocks that are already allocated and written
//! changes no metadata, so `fdatasync` is one data write and a cache flush, with no inode or
//! extent update to wait for.

use std::fs::File;
use std::os::unix::fs::FileExt;

pub const SLOT: usize = 512;
const ENTRY_HEADER: usize = 32;
const SEGMENT_MAGIC: &[u8; 4] = b"PVJS";
const ENTRY_MAGIC: &[u8; 4] = b"PVJE";
const VERSION: u32 = 1;
/// Largest payload accepted; pvdir's entries are a few hundred bytes.
pub const MAX_PAYLOAD: usize = 16 * 1024;

/// Slots an entry of `len` payload bytes takes.
pub fn slots_for(len: usize) -> u64 {
    (ENTRY_HEADER + len).div_ceil(SLOT) as u64
}

fn crc(parts: &[&[u8]]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    for p in parts {
        h.update(p);
    }
    h.finalize()
}

// Callers check the length first; a short slice reads as zero rather than panicking.
fn u32_at(b: &[u8], at: usize) -> u32 {
    b.get(at..at + 4)
        .and_then(|s| s.try_into().ok())
        .map_or(0, u32::from_le_bytes)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    b.get(at..at + 8)
        .and_then(|s| s.try_into().ok())
        .map_or(0, u64::from_le_bytes)
}

/// The header slot of a segment whose entries carry `epoch`.
pub fn encode_header(epoch: u64) -> [u8; SLOT] {
    let mut slot = [0u8; SLOT];
    slot[0..4].copy_from_slice(SEGMENT_MAGIC);
    slot[4..8].copy_from_slice(&VERSION.to_le_bytes());
    slot[8..16].copy_from_slice(&epoch.to_le_bytes());
    let sum = crc(&[&slot[0..16]]);
    slot[16..20].copy_from_slice(&sum.to_le_bytes());
    slot
}

/// The epoch of a header slot; 0 for a free segment or one that is not a pvdir journal.
pub fn decode_header(slot: &[u8]) -> u64 {
    if slot.len() < 20 || &slot[0..4] != SEGMENT_MAGIC {
        return 0;
    }
    if u32_at(slot, 16) != crc(&[&slot[0..16]]) || u32_at(slot, 4) != VERSION {
        return 0;
    }
    u64_at(slot, 8)
}

/// One entry encoded into whole slots.
pub fn encode_entry(epoch: u64, lsn: u64, payload: &[u8]) -> Vec<u8> {
    let mut buf = vec![0u8; slots_for(payload.len()) as usize * SLOT];
    let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
    buf[0..4].copy_from_slice(ENTRY_MAGIC);
    buf[8..16].copy_from_slice(&epoch.to_le_bytes());
    buf[16..24].copy_from_slice(&lsn.to_le_bytes());
    buf[24..28].copy_from_slice(&len.to_le_bytes());
    let sum = crc(&[&buf[0..28], payload]);
    buf[28..32].copy_from_slice(&sum.to_le_bytes());
    buf[ENTRY_HEADER..ENTRY_HEADER + payload.len()].copy_from_slice(payload);
    buf
}

/// A valid entry read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub lsn: u64,
    pub payload: Vec<u8>,
}

/// The valid run of entries in a segment file, and the slot after it. Read entry by entry: a
/// start-up never holds a whole segment (up to 16 MiB) in memory.
pub fn read(file: &File) -> (u64, Vec<Entry>, u64) {
    parse_with(|at, buf| file.read_exact_at(buf, at).is_ok())
}

/// `read_at(offset, buf)` fills `buf` from `offset`, or says the segment ends before.
fn parse_with(read_at: impl Fn(u64, &mut [u8]) -> bool) -> (u64, Vec<Entry>, u64) {
    let mut header = [0u8; SLOT];
    let epoch = match read_at(0, &mut header) {
        true => decode_header(&header),
        false => 0,
    };
    let mut entries: Vec<Entry> = Vec::new();
    let mut slot = 1u64;
    if epoch == 0 {
        return (0, entries, slot);
    }
    let mut head = [0u8; ENTRY_HEADER];
    loop {
        let at = slot * SLOT as u64;
        if !read_at(at, &mut head) {
            break;
        }
        let len = u32_at(&head, 24) as usize;
        let lsn = u64_at(&head, 16);
        let ok_shape = &head[0..4] == ENTRY_MAGIC
            && u64_at(&head, 8) == epoch
            && len <= MAX_PAYLOAD
            && entries.last().is_none_or(|e| e.lsn + 1 == lsn);
        if !ok_shape {
            break;
        }
        let mut payload = vec![0u8; len];
        if !read_at(at + ENTRY_HEADER as u64, &mut payload)
            || u32_at(&head, 28) != crc(&[&head[0..28], &payload])
        {
            break;
        }
        entries.push(Entry { lsn, payload });
        slot += slots_for(len);
    }
    (epoch, entries, slot)
}

/// Write `bytes` at `offset`, all of it.
pub fn write_at(file: &File, bytes: &[u8], offset: u64) -> std::io::Result<()> {
    file.write_all_at(bytes, offset)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The valid run of entries in a segment's bytes (header included), and the slot after it.
    fn parse(bytes: &[u8]) -> (u64, Vec<Entry>, u64) {
        parse_with(
            |at, buf| match bytes.get(at as usize..at as usize + buf.len()) {
                Some(b) => {
                    buf.copy_from_slice(b);
                    true
                }
                None => false,
            },
        )
    }

    fn segment(epoch: u64, entries: &[(u64, &[u8])]) -> Vec<u8> {
        let mut bytes = encode_header(epoch).to_vec();
        for (lsn, p) in entries {
            bytes.extend(encode_entry(epoch, *lsn, p));
        }
        bytes.resize(bytes.len() + 4 * SLOT, 0);
        bytes
    }

    #[test]
    fn entries_round_trip_across_slot_boundaries() {
        let big = vec![7u8; 1000];
        let bytes = segment(3, &[(10, b"a"), (11, &big), (12, b"")]);
        let (epoch, entries, next) = parse(&bytes);
        assert_eq!(epoch, 3);
        assert_eq!(
            entries.iter().map(|e| e.lsn).collect::<Vec<_>>(),
            [10, 11, 12]
        );
        assert_eq!(entries[1].payload, big);
        assert_eq!(next, 1 + 1 + 3 + 1);
    }

    #[test]
    fn the_run_ends_at_a_torn_stale_or_skipped_entry() {
        let mut torn = segment(3, &[(10, b"a"), (11, b"b")]);
        torn[2 * SLOT + ENTRY_HEADER] ^= 1; // payload of lsn 11
        assert_eq!(parse(&torn).1.len(), 1);

        // A slot left from an earlier epoch after the segment was re-headed.
        let mut stale = segment(4, &[(20, b"a")]);
        stale[2 * SLOT..3 * SLOT].copy_from_slice(&encode_entry(3, 21, b"old"));
        assert_eq!(parse(&stale).1.len(), 1);

        let skipped = segment(3, &[(10, b"a"), (12, b"c")]);
        assert_eq!(parse(&skipped).1.len(), 1);
    }

    #[test]
    fn a_free_or_foreign_segment_has_no_entries() {
        assert_eq!(parse(&segment(0, &[(1, b"a")])).1, vec![]);
        let mut foreign = segment(3, &[(1, b"a")]);
        foreign[9] ^= 1; // the header's epoch, so its checksum fails
        assert_eq!(parse(&foreign).0, 0);
        assert_eq!(parse(&[0u8; 100]).0, 0);
    }
}
