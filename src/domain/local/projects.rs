//! Project IDs of local volumes and the bytes their quotas promise.
//!
//! Invariants: an ID is held from the moment a create reserves it until its volume's delete
//! has cleared the quota, so two volumes never share one, even while creates run side by side
//! (the reservation and the room check happen under one lock). Only one process hands IDs
//! out for a root: the journal's lock keeps a second controller out. What is held is rebuilt
//! at start-up from the records, which carry each volume's ID, so nothing is remembered that
//! the disk does not say. An ID that the quota subsystem shows in use (files charged to it,
//! or a limit: another tool's project, or a deleted volume's file still held open) is skipped.

use std::collections::BTreeMap;
use std::sync::Mutex;

use crate::os::quota::ProjectId;

/// The IDs pvdir hands out. Administrators number their own projects from 1 (`/etc/projid`);
/// 2^20 upwards keeps clear of them, and stays below 2^31 for tools that read IDs as signed.
pub(super) const FIRST: u32 = 1 << 20;
pub(super) const LAST: u32 = (1 << 31) - 1;

#[derive(Default)]
struct Held {
    /// Each held ID's limit in bytes.
    limits: BTreeMap<u32, u64>,
    /// The sum of `limits`.
    promised: u64,
    /// Where the next search starts: freed IDs are not reused at once.
    next: u32,
}

pub(super) struct Projects {
    held: Mutex<Held>,
    first: u32,
    last: u32,
}

/// Why no ID was reserved.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Refused<E> {
    /// The room check said no, or asking the kernel about an ID failed.
    Check(E),
    /// Every ID in the range is held or in use.
    Exhausted,
}

impl Projects {
    pub(super) fn new() -> Self {
        Self::in_range(FIRST, LAST)
    }

    pub(super) fn in_range(first: u32, last: u32) -> Self {
        Self {
            held: Mutex::new(Held {
                next: first,
                ..Held::default()
            }),
            first,
            last,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Held> {
        // A panic while holding the lock cannot leave the map half-changed (single inserts).
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Hold `id` with `limit` (a volume found at start-up, or one whose limit changed).
    pub(super) fn hold(&self, id: ProjectId, limit: u64) {
        let mut held = self.lock();
        let old = held.limits.insert(id.get(), limit).unwrap_or(0);
        held.promised = held.promised.saturating_sub(old).saturating_add(limit);
        if id.get() >= held.next && id.get() < self.last {
            held.next = id.get() + 1;
        }
    }

    pub(super) fn release(&self, id: ProjectId) {
        let mut held = self.lock();
        if let Some(old) = held.limits.remove(&id.get()) {
            held.promised = held.promised.saturating_sub(old);
        }
    }

    /// The IDs held now.
    pub(super) fn ids(&self) -> Vec<ProjectId> {
        self.lock()
            .limits
            .keys()
            .filter_map(|id| ProjectId::new(*id))
            .collect()
    }

    pub(super) fn promised(&self) -> u64 {
        self.lock().promised
    }

    /// Change held `id`'s limit to `limit` once `room(promised now, growth)` agrees; nothing
    /// changes when it refuses. Growth is what the change adds to the promises.
    pub(super) fn grow<E>(
        &self,
        id: ProjectId,
        limit: u64,
        room: impl FnOnce(u64, u64) -> Result<(), E>,
    ) -> Result<(), E> {
        let mut held = self.lock();
        let old = held.limits.get(&id.get()).copied().unwrap_or(0);
        room(held.promised, limit.saturating_sub(old))?;
        held.limits.insert(id.get(), limit);
        held.promised = held.promised.saturating_sub(old).saturating_add(limit);
        Ok(())
    }

    /// Reserve a free ID with `limit`, once `room(promised now, limit)` agrees; `unused`
    /// asks the quota subsystem whether nothing is charged to an ID (a failure to ask ends
    /// the search: it would fail for every ID).
    pub(super) fn reserve<E>(
        &self,
        limit: u64,
        room: impl FnOnce(u64, u64) -> Result<(), E>,
        unused: impl Fn(ProjectId) -> Result<bool, E>,
    ) -> Result<ProjectId, Refused<E>> {
        let mut held = self.lock();
        room(held.promised, limit).map_err(Refused::Check)?;
        let span = u64::from(self.last - self.first) + 1;
        let mut candidate = held.next.clamp(self.first, self.last);
        for _ in 0..span {
            let id = ProjectId::new(candidate).filter(|id| !held.limits.contains_key(&id.get()));
            candidate = if candidate >= self.last {
                self.first
            } else {
                candidate + 1
            };
            let Some(id) = id else { continue };
            if unused(id).map_err(Refused::Check)? {
                held.limits.insert(id.get(), limit);
                held.promised = held.promised.saturating_add(limit);
                held.next = candidate;
                return Ok(id);
            }
        }
        Err(Refused::Exhausted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u32) -> ProjectId {
        ProjectId::new(n).unwrap()
    }

    fn any_room(_: u64, _: u64) -> Result<(), ()> {
        Ok(())
    }

    #[test]
    fn reserved_ids_are_distinct_and_freed_ones_are_not_reused_at_once() {
        let p = Projects::in_range(10, 13);
        let a = p.reserve(5, any_room, |_| Ok(true)).unwrap();
        let b = p.reserve(7, any_room, |_| Ok(true)).unwrap();
        assert_eq!((a, b), (id(10), id(11)));
        assert_eq!(p.promised(), 12);
        p.release(a);
        assert_eq!(p.promised(), 7);
        assert_eq!(p.reserve(1, any_room, |_| Ok(true)).unwrap(), id(12));
        assert_eq!(p.reserve(1, any_room, |_| Ok(true)).unwrap(), id(13));
        // Wrapped around: 10 is free again, 11 is still held.
        assert_eq!(p.reserve(1, any_room, |_| Ok(true)).unwrap(), id(10));
        assert_eq!(
            p.reserve(1, any_room, |_| Ok(true)),
            Err(Refused::Exhausted)
        );
    }

    #[test]
    fn an_id_the_kernel_shows_in_use_is_skipped() {
        let p = Projects::in_range(10, 20);
        let got = p.reserve(1, any_room, |i| Ok(i != id(10) && i != id(11)));
        assert_eq!(got.unwrap(), id(12));
    }

    #[test]
    fn a_failure_to_ask_the_kernel_ends_the_search() {
        let p = Projects::in_range(10, 20);
        let got = p.reserve(1, any_room, |_| Err(()));
        assert_eq!(got, Err(Refused::Check(())));
        assert_eq!(p.promised(), 0);
    }

    #[test]
    fn held_ids_from_start_up_move_the_search_past_them() {
        let p = Projects::in_range(10, 20);
        p.hold(id(15), 100);
        assert_eq!(p.promised(), 100);
        assert_eq!(p.reserve(1, any_room, |_| Ok(true)).unwrap(), id(16));
    }

    #[test]
    fn a_refused_room_changes_nothing() {
        let p = Projects::in_range(10, 20);
        let a = p.reserve(50, any_room, |_| Ok(true)).unwrap();
        let full = |promised: u64, more: u64| match promised + more > 100 {
            true => Err("full"),
            false => Ok(()),
        };
        assert_eq!(
            p.reserve(51, full, |_| Ok(true)),
            Err(Refused::Check("full"))
        );
        assert_eq!(p.grow(a, 101, full), Err("full"));
        assert_eq!(p.promised(), 50);
        p.grow(a, 100, full).unwrap();
        assert_eq!(p.promised(), 100);
    }

    #[test]
    fn concurrent_reservations_never_share_an_id() {
        let p = std::sync::Arc::new(Projects::in_range(1, 10_000));
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let p = std::sync::Arc::clone(&p);
                std::thread::spawn(move || {
                    (0..200)
                        .map(|_| p.reserve(1, any_room, |_| Ok(true)).unwrap().get())
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let mut all: Vec<u32> = handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), 1600);
        assert_eq!(p.promised(), 1600);
    }
}
