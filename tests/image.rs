//! The Dockerfile and the image CI builds from it. CI has no container engine, so
//! tests/k8s/image.sh rebuilds the Dockerfile's runtime stage from the same Debian packages
//! (mmdebstrap, umoci) for the cluster tier; these tests keep the two from drifting apart: the
//! recipe's plan is what the Dockerfile says, and it refuses a Dockerfile it cannot follow.
//!
//! The Dockerfile itself is checked here too: the runtime stage installs the Debian packages
//! that provide every program the driver runs (asked of this Debian machine's dpkg, which knows
//! which package ships which file), both stages are the same Debian release, the build stage
//! copies every file cargo needs to build the binary (proved by `cargo check --locked` on
//! exactly those files), and the entrypoint is the binary the manifests expect to run with
//! `serve` arguments.

use std::collections::BTreeMap;
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
        .unwrap_or_else(|| panic!("{program} is not installed here (tests/setup.sh installs it)"));
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
    for (file, c) in pvdir_containers() {
        assert!(c["command"].is_null(), "{file}: keep the entrypoint");
        assert_eq!(c["args"][0].as_str(), Some("serve"), "{file}");
    }
}

/// The containers running the pvdir image in the plain manifests under deploy/ (the Helm
/// chart's templates are not YAML until rendered; tests/manifests.rs compares the two), with
/// the file each is in. At least the controller's and the node plugin's, or the manifests
/// moved where this does not look.
fn pvdir_containers() -> Vec<(String, serde_yaml::Value)> {
    fn walk(dir: &Path, out: &mut Vec<(String, serde_yaml::Value)>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                if path.file_name().unwrap() != "helm" {
                    walk(&path, out);
                }
                continue;
            }
            if path.extension().is_none_or(|e| e != "yaml") {
                continue;
            }
            let file = path.strip_prefix(root()).unwrap().display().to_string();
            let text = std::fs::read_to_string(&path).unwrap();
            for doc in serde_yaml::Deserializer::from_str(&text) {
                let doc: serde_yaml::Value = serde::Deserialize::deserialize(doc).unwrap();
                let containers = &doc["spec"]["template"]["spec"]["containers"];
                for c in containers.as_sequence().into_iter().flatten() {
                    if c["image"].as_str().is_some_and(|i| i.contains("/pvdir:")) {
                        out.push((file.clone(), c.clone()));
                    }
                }
            }
        }
    }
    let mut out = Vec::new();
    walk(&root().join("deploy"), &mut out);
    assert!(
        out.len() >= 2,
        "the controller and the node plugin run pvdir: {out:?}"
    );
    out
}

/// The stage's base image, FROM's first argument.
fn base_image(stage: &[(String, String)]) -> String {
    let (op, rest) = &stage[0];
    assert_eq!(op, "FROM");
    rest.split_whitespace().next().unwrap().to_string()
}

/// The Debian release a Debian-based image tag names: `debian:bookworm-slim`,
/// `rust:1-bookworm`.
fn release_of(image: &str) -> String {
    let tag = image.rsplit_once(':').expect("a tagged base image").1;
    let tag = tag.strip_suffix("-slim").unwrap_or(tag);
    tag.rsplit('-').next().unwrap().to_string()
}

fn exec_form(stage: &[(String, String)], instruction: &str) -> Option<serde_json::Value> {
    stage
        .iter()
        .rev()
        .find(|(op, _)| op == instruction)
        .map(|(_, rest)| serde_json::from_str(rest).expect("exec form"))
}

/// Runs tests/k8s/image.sh --plan on `dockerfile` (the repository's when None).
fn plan_output(dockerfile: Option<&Path>) -> std::process::Output {
    let mut cmd = Command::new("bash");
    cmd.arg(root().join("tests/k8s/image.sh")).arg("--plan");
    if let Some(file) = dockerfile {
        cmd.env("PVDIR_DOCKERFILE", file);
    }
    cmd.output().unwrap()
}

/// The recipe's plan for the repository's Dockerfile, as key → value.
fn plan() -> BTreeMap<String, String> {
    let out = plan_output(None);
    assert!(
        out.status.success(),
        "image.sh --plan: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            let (k, v) = l.split_once('=').expect("key=value");
            (k.to_string(), v.to_string())
        })
        .collect()
}

#[test]
fn the_image_recipe_plans_what_the_dockerfile_says() {
    let plan = plan();
    let all = instructions();
    let stage = runtime_stage();
    let json = |key: &str| serde_json::from_str::<serde_json::Value>(&plan[key]).unwrap();

    assert_eq!(plan["release"], release_of(&base_image(&stage)));
    let build_start = all.iter().position(|(op, _)| op == "FROM").unwrap();
    assert_eq!(
        plan["build_release"],
        release_of(&base_image(&all[build_start..]))
    );
    assert_eq!(
        plan["build_release"], plan["release"],
        "the binary runs on the glibc it was linked against"
    );
    assert!(
        base_image(&stage).ends_with("-slim") && plan["variant"] == "minbase",
        "minbase is the recipe's analogue of a -slim base"
    );
    assert_eq!(
        plan["packages"].split_whitespace().collect::<Vec<_>>(),
        installed_packages()
    );
    let copy = stage
        .iter()
        .find(|(op, _)| op == "COPY")
        .map(|(_, rest)| rest.split_whitespace().collect::<Vec<_>>())
        .expect("the runtime stage copies the binary");
    assert_eq!(copy[1..], [plan["binary_source"].as_str(), &plan["binary"]]);
    let user = stage.iter().rev().find(|(op, _)| op == "USER");
    assert_eq!(plan["user"], user.map(|(_, u)| u.as_str()).unwrap_or(""));
    assert_eq!(Some(json("entrypoint")), exec_form(&stage, "ENTRYPOINT"));
    assert_eq!(
        json("cmd"),
        exec_form(&stage, "CMD").unwrap_or(serde_json::json!([]))
    );
}

#[test]
fn the_image_recipe_builds_what_the_manifests_run() {
    let plan = plan();
    let entrypoint: Vec<String> = serde_json::from_str(&plan["entrypoint"]).unwrap();
    assert_eq!(
        entrypoint,
        [plan["binary"].clone()],
        "runs the copied binary"
    );
    for (file, c) in pvdir_containers() {
        assert_eq!(
            c["image"].as_str(),
            Some(plan["image"].as_str()),
            "{file}: the image name CI imports"
        );
        // The manifests keep the entrypoint and replace CMD with their args.
        assert!(c["command"].is_null(), "{file}: keep the entrypoint");
    }
}

#[test]
fn the_image_recipe_refuses_a_dockerfile_it_cannot_follow() {
    let original = std::fs::read_to_string(root().join("Dockerfile")).unwrap();
    let user_line = original
        .lines()
        .find(|l| l.starts_with("USER "))
        .expect("a USER line to insert before");
    // Each would make the real image differ from the one the recipe builds.
    let changes = [
        ("ENV", "ENV X=1"),
        ("something-else", "RUN something-else"),
        ("WORKDIR", "WORKDIR /var/lib/pvdir"),
        (
            "without --no-install-recommends",
            "RUN apt-get update && apt-get install -y strace",
        ),
        ("exec form", "ENTRYPOINT /usr/local/bin/pvdir"),
    ];
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("Dockerfile");
    for (reason, extra) in changes {
        let changed = original.replacen(user_line, &format!("{extra}\n{user_line}"), 1);
        std::fs::write(&path, changed).unwrap();
        let out = plan_output(Some(&path));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{extra}: accepted");
        assert!(
            stderr.contains(reason) && stderr.contains(extra.split(' ').next().unwrap()),
            "{extra}: refused without naming it: {stderr}"
        );
    }
    // The unchanged copy is accepted, so the refusals above are the change's.
    std::fs::write(&path, &original).unwrap();
    assert!(plan_output(Some(&path)).status.success());
}
