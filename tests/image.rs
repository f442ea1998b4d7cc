//! The Dockerfile, checked without a container engine (CI has none): the runtime stage
//! installs the Debian packages that provide every program the driver runs (asked of this
//! Debian machine's dpkg, which knows which package ships which file), both stages are the same
//! Debian release, the build stage copies every file cargo needs to build the binary (proved
//! by `cargo check --locked` on exactly those files), and the entrypoint is the binary the manifests
//! expect to run with `serve` arguments.

use std::path::{Path, PathBuf};
use std::process::Command;

use pvdir::os::real::EXTERNAL_PROGRAMS;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The Dockerfile's instructions, continuation lines joined and comments dropped.
fn instructions() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(root().join("Dockerfile")).unwrap();
    let mut out = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') || line.is_empty() && current.is_empty() {
            continue;
        }
        match line.strip_suffix('\\') {
            Some(part) => current.push_str(part),
            None => {
                current.push_str(line);
                let (op, rest) = current.split_once(' ').unwrap_or((&current, ""));
                out.push((op.to_uppercase(), rest.trim().to_string()));
                current.clear();
            }
        }
    }
    out
}

/// Instructions of the last stage (the image that ships).
fn runtime_stage() -> Vec<(String, String)> {
    let all = instructions();
    let last = all.iter().rposition(|(op, _)| op == "FROM").unwrap();
    all[last..].to_vec()
}

fn installed_packages() -> Vec<String> {
    runtime_stage()
        .iter()
        .filter(|(op, _)| op == "RUN")
        .flat_map(|(_, cmd)| {
            cmd.split("&&")
                .filter_map(|c| c.trim().strip_prefix("apt-get install"))
                .flat_map(|args| args.split_whitespace().filter(|a| !a.starts_with('-')))
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .collect()
}

/// The Debian package shipping `program` as found on this machine's PATH.
fn package_of(program: &str) -> String {
    let path = std::env::var("PATH").unwrap_or_default();
    let found = path
        .split(':')
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"])
        .map(|d| Path::new(d).join(program))
        .find(|p| p.exists())
        .unwrap_or_else(|| panic!("{program} is not installed here (.ci/run installs it)"));
    // Debian 12 has merged /usr, but dpkg records files where the package put them.
    let name = found.file_name().unwrap();
    let candidates = ["/sbin", "/usr/sbin", "/bin", "/usr/bin"].map(|d| Path::new(d).join(name));
    for candidate in std::iter::once(found.clone()).chain(candidates) {
        let out = Command::new("dpkg")
            .arg("-S")
            .arg(&candidate)
            .output()
            .unwrap();
        if out.status.success() {
            let text = String::from_utf8_lossy(&out.stdout);
            return text.split(':').next().unwrap().trim().to_string();
        }
    }
    panic!("dpkg knows no package shipping {}", found.display())
}

#[test]
fn the_image_has_every_program_the_driver_runs() {
    let packages = installed_packages();
    for program in EXTERNAL_PROGRAMS {
        let package = package_of(program);
        assert!(
            packages.contains(&package),
            "{program} comes from {package}, which the image does not install ({packages:?})"
        );
    }
}

#[test]
fn both_stages_are_the_same_debian_release() {
    let bases: Vec<String> = instructions()
        .into_iter()
        .filter(|(op, _)| op == "FROM")
        .map(|(_, rest)| rest.split_whitespace().next().unwrap().to_string())
        .collect();
    assert_eq!(
        bases.len(),
        2,
        "a build stage and a runtime stage: {bases:?}"
    );
    for base in &bases {
        assert!(
            base.contains("bookworm"),
            "{base}: glibc must match the build"
        );
    }
}

#[test]
fn the_build_stage_copies_everything_cargo_needs() {
    let dir = tempfile::tempdir().unwrap();
    for (op, rest) in instructions() {
        if op != "COPY" || rest.starts_with("--from") {
            continue;
        }
        let parts: Vec<&str> = rest.split_whitespace().collect();
        let (sources, dest) = parts.split_at(parts.len() - 1);
        for source in sources {
            let to = if dest[0].ends_with('/') {
                dir.path().join(source)
            } else {
                dir.path().join(dest[0])
            };
            let status = Command::new("cp")
                .arg("-r")
                .arg(root().join(source))
                .arg(&to)
                .status()
                .unwrap();
            assert!(status.success(), "COPY {source}");
        }
    }
    // The build the image runs, on exactly the copied files (check, not build: the same
    // resolution of targets, features and the lock file, without the release compile). The
    // shared target directory keeps the dependencies compiled once.
    let out = Command::new(env!("CARGO"))
        .args([
            "check",
            "--offline",
            "--locked",
            "--quiet",
            "--bin",
            "pvdir",
        ])
        .env("CARGO_TARGET_DIR", root().join("target"))
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "the Dockerfile's build fails on the files it copies: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_entrypoint_is_the_binary_the_manifests_run() {
    let stage = runtime_stage();
    let copied = stage
        .iter()
        .find(|(op, rest)| op == "COPY" && rest.contains("target/release/pvdir"))
        .map(|(_, rest)| rest.split_whitespace().last().unwrap().to_string())
        .expect("the runtime stage copies the binary");
    let entrypoint = stage
        .iter()
        .find(|(op, _)| op == "ENTRYPOINT")
        .map(|(_, rest)| serde_json::from_str::<Vec<String>>(rest).expect("exec form"))
        .expect("an entrypoint");
    assert_eq!(
        entrypoint,
        [copied],
        "the entrypoint runs the copied binary"
    );
    let user = stage.iter().rev().find(|(op, _)| op == "USER");
    assert_eq!(
        user.map(|(_, u)| u.as_str()),
        Some("root"),
        "mounting needs root, and says so"
    );
    // The manifests give `serve ...` as args and leave the entrypoint alone.
    for file in ["deploy/controller.yaml", "deploy/node.yaml"] {
        let mut found = 0;
        let text = std::fs::read_to_string(root().join(file)).unwrap();
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let doc: serde_yaml::Value = serde::Deserialize::deserialize(doc).unwrap();
            let containers = &doc["spec"]["template"]["spec"]["containers"];
            for c in containers.as_sequence().into_iter().flatten() {
                if c["image"].as_str().is_some_and(|i| i.contains("/pvdir:")) {
                    assert!(c["command"].is_null(), "{file}: keep the entrypoint");
                    assert_eq!(c["args"][0].as_str(), Some("serve"), "{file}");
                    found += 1;
                }
            }
        }
        assert_eq!(found, 1, "{file}: one pvdir container");
    }
}
