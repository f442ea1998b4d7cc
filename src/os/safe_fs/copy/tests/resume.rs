//! A copy cut short (by its deadline, a killed helper, a restart) resumes to the same result:
//! partial files continued or replaced, finished directories skipped within one boot only.

use std::fs;
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::stat::Mode;

use super::super::{copy_tree, files, CopyPlan, CopyStats, Work};
use super::{assert_same_tree, dirs, far, run, Dirs};

#[test]
fn a_copy_past_its_deadline_resumes_to_the_same_result() {
    let d = dirs();
    let vol = d.base.join("vol");
    for i in 0..50 {
        fs::create_dir_all(vol.join(format!("d{}", i % 7))).unwrap();
        fs::write(vol.join(format!("d{}/f{i}", i % 7)), format!("file {i}")).unwrap();
    }
    let p = copy_tree(&d.plan, Instant::now()).unwrap();
    assert!(!p.complete);
    let mut calls = 1;
    loop {
        // A tiny budget each time: every call gets somewhere, and none starts over.
        let p = copy_tree(&d.plan, Instant::now() + Duration::from_micros(300)).unwrap();
        calls += 1;
        if p.complete {
            break;
        }
        assert!(calls < 10_000, "the copy never completes");
    }
    assert_same_tree(&vol, &d.base.join("snap"));
}

/// The work directory as a call of this boot left it: what a resumed copy trusts.
fn same_boot(d: &Dirs) {
    let boot = fs::read("/proc/sys/kernel/random/boot_id").unwrap();
    fs::write(d.base.join("work/boot"), boot).unwrap();
}

/// The work directory, opened as a call opens it.
fn open_work(d: &Dirs) -> Work {
    let fd = nix::fcntl::open(
        &d.base.join("work"),
        super::super::super::walk::dir_flags(),
        Mode::empty(),
    )
    .unwrap();
    Work::open(fd, d.base.join("work")).unwrap().0
}

/// A partial copy of `rel`'s source, as a call cut short after `data` left it.
fn partial(d: &Dirs, rel: &str, data: &[u8]) -> PathBuf {
    let work = open_work(d);
    let st = nix::sys::stat::stat(&d.base.join("vol").join(rel)).unwrap();
    let (name, file, _) = work.file(Path::new(rel), &st).unwrap();
    nix::unistd::write(&file, data).unwrap();
    d.base.join("work").join(name.to_str().unwrap())
}

#[test]
fn a_partial_file_copy_is_continued_while_its_source_is_unchanged() {
    let d = dirs();
    let data: Vec<u8> = (0..3u32 << 20).map(|i| (i % 251) as u8).collect();
    fs::write(d.base.join("vol/big"), &data).unwrap();
    // Marked, to see that the first 2 MiB are kept rather than copied again.
    let mut start = data[..2 << 20].to_vec();
    start[..4].copy_from_slice(b"KEPT");
    partial(&d, "big", &start);
    run(&d.plan);
    let copied = fs::read(d.base.join("snap/big")).unwrap();
    assert_eq!(&copied[..4], b"KEPT");
    assert_eq!(copied[4..], data[4..]);
}

#[test]
fn a_partial_copy_of_a_source_that_changed_is_replaced_not_kept_beside() {
    let d = dirs();
    fs::write(d.base.join("vol/f"), b"first").unwrap();
    let stale = partial(&d, "f", b"fir");
    std::thread::sleep(Duration::from_millis(10));
    fs::write(d.base.join("vol/f"), b"second version").unwrap();
    let p = copy_tree(&d.plan, far()).unwrap();
    assert!(p.complete);
    assert!(!stale.exists());
    assert_eq!(fs::read(d.base.join("snap/f")).unwrap(), b"second version");
}

#[test]
fn entries_already_in_place_are_kept_within_one_boot() {
    let d = dirs();
    fs::write(d.base.join("vol/f"), b"source").unwrap();
    fs::write(d.base.join("snap/f"), b"copied before").unwrap();
    same_boot(&d);
    run(&d.plan);
    assert_eq!(fs::read(d.base.join("snap/f")).unwrap(), b"copied before");
}

#[test]
fn after_a_restart_of_the_machine_the_copy_starts_again() {
    let d = dirs();
    fs::write(d.base.join("vol/f"), b"source").unwrap();
    // What a power cut can leave: a name renamed into place whose data never reached disk.
    fs::write(d.base.join("snap/f"), b"").unwrap();
    fs::create_dir(d.base.join("snap/gone")).unwrap();
    fs::write(d.base.join("work/boot"), b"another boot").unwrap();
    run(&d.plan);
    assert_eq!(fs::read(d.base.join("snap/f")).unwrap(), b"source");
    assert!(!d.base.join("snap/gone").exists());
}

#[test]
fn a_file_after_a_hole_is_never_skipped_by_a_short_budget() {
    let d = dirs();
    let f = fs::File::create(d.base.join("vol/late")).unwrap();
    f.write_all_at(b"data", 4 << 20).unwrap();
    drop(f);
    let mut calls = 0;
    while !copy_tree(&d.plan, Instant::now()).unwrap().complete {
        calls += 1;
        assert!(calls < 100);
    }
    let copied = fs::read(d.base.join("snap/late")).unwrap();
    assert_eq!(copied.len(), (4 << 20) + 4);
    assert_eq!(&copied[4 << 20..], b"data");
}

#[test]
fn an_entry_whose_kind_changed_between_calls_is_replaced() {
    let d = dirs();
    fs::write(d.base.join("vol/was-dir"), b"now a file").unwrap();
    fs::create_dir(d.base.join("vol/was-file")).unwrap();
    fs::write(d.base.join("vol/was-file/inner"), b"inner").unwrap();
    fs::create_dir_all(d.base.join("snap/was-dir/sub")).unwrap();
    fs::write(d.base.join("snap/was-dir/sub/old"), b"old").unwrap();
    fs::write(d.base.join("snap/was-file"), b"old file").unwrap();
    same_boot(&d);
    run(&d.plan);
    assert_same_tree(&d.base.join("vol"), &d.base.join("snap"));
}

/// Copy in calls of `budget` until complete; the stats of all calls, and how many there were.
fn run_in_calls(plan: &CopyPlan, budget: Duration) -> (CopyStats, usize) {
    let (mut total, mut calls) = (CopyStats::default(), 0);
    loop {
        let p = copy_tree(plan, Instant::now() + budget).unwrap();
        total.add(&p.stats);
        calls += 1;
        if p.complete {
            return (total, calls);
        }
        assert!(calls < 100_000, "the copy never completes");
    }
}

#[test]
fn resumed_calls_skip_directories_finished_before_and_copy_the_same_tree() {
    let d = dirs();
    let vol = d.base.join("vol");
    for i in 0..400 {
        let dir = vol.join(format!("d{:02}/sub", i % 20));
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join(format!("f{i}")), vec![i as u8; 100 + i]).unwrap();
    }
    let (stats, calls) = run_in_calls(&d.plan, Duration::from_micros(200));
    assert!(calls > 1);
    assert!(stats.finished_before > 0, "{stats:?} in {calls} calls");
    assert_same_tree(&vol, &d.base.join("snap"));
    // The work directory keeps nothing once the copy is complete, the log included.
    assert_eq!(fs::read_dir(d.base.join("work")).unwrap().count(), 0);
}

/// The work directory, with directory `rel` of the source logged as finished.
fn log_finished(d: &Dirs, rel: &str) {
    let mut work = open_work(d);
    let ino = fs::metadata(d.base.join("vol").join(rel)).unwrap().ino();
    work.finish(Path::new(rel), ino).unwrap();
}

#[test]
fn a_finished_directory_is_trusted_within_one_boot_only() {
    let d = dirs();
    fs::create_dir(d.base.join("vol/d")).unwrap();
    fs::write(d.base.join("vol/d/f"), b"data").unwrap();
    fs::create_dir(d.base.join("snap/d")).unwrap();
    log_finished(&d, "d");
    same_boot(&d);
    let p = run(&d.plan);
    assert_eq!(p.stats.finished_before, 1);
    assert!(!d.base.join("snap/d/f").exists());

    // The same state left by another boot: nothing of it is trusted.
    log_finished(&d, "d");
    fs::write(d.base.join("work/boot"), b"another boot").unwrap();
    let p = run(&d.plan);
    assert_eq!(p.stats.finished_before, 0);
    assert_same_tree(&d.base.join("vol"), &d.base.join("snap"));
}

#[test]
fn a_finished_directory_replaced_in_the_source_is_walked_again() {
    let d = dirs();
    fs::create_dir(d.base.join("vol/d")).unwrap();
    fs::create_dir(d.base.join("snap/d")).unwrap();
    log_finished(&d, "d");
    same_boot(&d);
    // Another directory of the same name: another inode.
    fs::rename(d.base.join("vol/d"), d.base.join("old")).unwrap();
    fs::create_dir(d.base.join("vol/d")).unwrap();
    fs::write(d.base.join("vol/d/f"), b"new").unwrap();
    let p = run(&d.plan);
    assert_eq!(p.stats.finished_before, 0);
    assert_same_tree(&d.base.join("vol"), &d.base.join("snap"));
}

#[test]
fn a_finished_directory_missing_from_the_destination_is_copied() {
    let d = dirs();
    fs::create_dir(d.base.join("vol/d")).unwrap();
    fs::write(d.base.join("vol/d/f"), b"data").unwrap();
    log_finished(&d, "d");
    same_boot(&d);
    run(&d.plan);
    assert_same_tree(&d.base.join("vol"), &d.base.join("snap"));
}

#[test]
fn many_files_of_one_directory_are_copied_by_workers_and_resume_to_the_same_result() {
    let d = dirs();
    let vol = d.base.join("vol");
    for i in 0..(3 * files::BATCH + 7) {
        let f = vol.join(format!("f{i:04}"));
        fs::write(&f, format!("file {i}").repeat(i % 50 + 1)).unwrap();
        fs::set_permissions(&f, fs::Permissions::from_mode(0o600 + (i as u32 % 0o100))).unwrap();
    }
    let (_, calls) = run_in_calls(&d.plan, Duration::from_micros(500));
    assert!(calls > 1);
    assert_same_tree(&vol, &d.base.join("snap"));
}
