//! The public API of the `firebreak` crate is committed in `crates/firebreak/public-api.txt`,
//! one item per line, so that growth is deliberate: this test fails when the API and the listing
//! differ, and prints the lines that differ.
//!
//! After a deliberate change, regenerate the listing and commit it with the change:
//! `UPDATE_PUBLIC_API=1 cargo test --test public_api`.
//!
//! It works on the stable toolchain: rustdoc's JSON output is unstable, so the nested
//! `cargo rustdoc` runs with `RUSTC_BOOTSTRAP=1`, and `public-api` is pinned to the release
//! that reads this toolchain's JSON format (see the root `Cargo.toml`).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

fn rustdoc_json(root: &Path) -> PathBuf {
    // A target directory of its own: the outer `cargo test` may hold the main one's lock.
    let target = root.join("target").join("public-api");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut child = Command::new(cargo)
        .current_dir(root)
        .env("RUSTC_BOOTSTRAP", "1")
        .env_remove("RUSTDOCFLAGS")
        .args([
            "rustdoc",
            "-q",
            "-p",
            "firebreak",
            "--lib",
            "--locked",
            // The integrations' items too: each is public API once its feature is on.
            "--features",
            "async-openai,reqwest",
            "--target-dir",
        ])
        .arg(&target)
        .args(["--", "-Z", "unstable-options", "--output-format", "json"])
        .spawn()
        .expect("cargo rustdoc starts");
    let limit = Instant::now() + Duration::from_secs(900);
    let status = loop {
        if let Some(s) = child.try_wait().expect("cargo rustdoc runs") {
            break s;
        }
        if Instant::now() > limit {
            let _ = child.kill();
            panic!("cargo rustdoc took over 15 minutes");
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(status.success(), "cargo rustdoc failed: {status}");
    target.join("doc").join("firebreak.json")
}

fn listing(json: &Path) -> String {
    let api = public_api::Builder::from_rustdoc_json(json)
        .omit_blanket_impls(true)
        .omit_auto_trait_impls(true)
        .omit_auto_derived_impls(true)
        .build()
        .expect("the rustdoc JSON is in the format public-api reads");
    let mut out = String::new();
    for item in api.items() {
        out.push_str(&item.to_string());
        out.push('\n');
    }
    out
}

#[test]
fn the_public_api_is_the_committed_listing() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let committed_path = root.join("crates/firebreak/public-api.txt");
    let now = listing(&rustdoc_json(root));
    assert!(now.lines().count() > 50, "an implausibly small API:\n{now}");
    if std::env::var_os("UPDATE_PUBLIC_API").is_some() {
        std::fs::write(&committed_path, &now).expect("listing written");
        return;
    }
    let committed = std::fs::read_to_string(&committed_path).unwrap_or_default();
    if committed != now {
        let old: std::collections::BTreeSet<&str> = committed.lines().collect();
        let new: std::collections::BTreeSet<&str> = now.lines().collect();
        let mut diff = String::new();
        for l in new.difference(&old) {
            diff.push_str(&format!("+ {l}\n"));
        }
        for l in old.difference(&new) {
            diff.push_str(&format!("- {l}\n"));
        }
        panic!(
            "the public API differs from crates/firebreak/public-api.txt ({} items now, {} \
             committed). If the change is deliberate, run \
             `UPDATE_PUBLIC_API=1 cargo test --test public_api` and commit the listing.\n{diff}",
            now.lines().count(),
            committed.lines().count()
        );
    }
}
