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

/// The API items in a listing: modules, types, traits, constants, free functions and inherent
/// methods. Struct fields, enum variants and the members of trait impls (`fmt`, `poll`, `call`,
/// associated types) are not counted: they follow from the items.
fn items(listing: &str) -> usize {
    let mut n = 0;
    let mut in_trait_impl = false;
    for line in listing.lines() {
        if let Some(head) = line.strip_prefix("impl") {
            in_trait_impl = head.split(" where ").next().unwrap_or("").contains(" for ");
            continue;
        }
        let mut body = line;
        while body.starts_with("#[") {
            body = body.split_once("] ").map_or("", |(_, rest)| rest);
        }
        let Some(rest) = body.strip_prefix("pub ") else {
            continue;
        };
        // `const fn`, `async fn`, `unsafe fn` are functions; a bare `const` is a constant.
        let rest = ["const fn ", "async fn ", "unsafe fn "]
            .iter()
            .find_map(|q| rest.strip_prefix(q).map(|r| (q, r)))
            .map_or(rest.to_string(), |(_, r)| format!("fn {r}"));
        let rest = rest.as_str();
        let Some((kind, path)) = rest.split_once(' ') else {
            continue;
        };
        if !matches!(
            kind,
            "fn" | "struct" | "enum" | "trait" | "type" | "mod" | "const" | "static" | "use"
        ) {
            continue; // a field or a variant
        }
        if matches!(kind, "fn" | "type" | "const") && in_trait_impl {
            // A member of a trait impl: its owner (the path segment before the name) is a type.
            let path = path.split(['(', ' ']).next().unwrap_or("");
            let mut depth = 0;
            let plain: String = path
                .chars()
                .filter(|c| {
                    match c {
                        '<' => depth += 1,
                        '>' => depth -= 1,
                        _ => return depth == 0,
                    }
                    false
                })
                .collect();
            let owner = plain.rsplit("::").nth(1).unwrap_or("");
            if owner.starts_with(|c: char| c.is_ascii_uppercase()) {
                continue;
            }
        }
        n += 1;
    }
    n
}

#[test]
fn the_api_has_at_most_60_percent_of_the_items_it_had_before_issue_15() {
    // `public-api-before-15.txt` is the same listing, made the same way, of the seven library
    // crates at commit 4cc8110 (before #15 merged them into `firebreak`).
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let before = std::fs::read_to_string(root.join("tests/public-api-before-15.txt")).unwrap();
    let now = std::fs::read_to_string(root.join("crates/firebreak/public-api.txt")).unwrap();
    // The integrations (#20: `firebreak::async_openai`, `firebreak::reqwest`) came after #15
    // and are opt-in features, and so is the fleet seam (#16: `Fleet`, `FleetEvent`,
    // `FleetInbox`, `GateLayer::with_fleet`, `Stack::fleet`) and the reconciliation's needs
    // (#19: model labels, reading class labels back), and routing (#17: `firebreak::route`,
    // `TargetKind` with the gate's `kind`, the breaker event and metric names), capabilities
    // the layers did not have; the target is about the layers #15 consolidated.
    let later = |l: &str| {
        l.contains("firebreak::async_openai")
            || l.contains("firebreak::reqwest")
            || l.contains("firebreak::gate::Fleet")
            || l.contains("GateLayer::with_fleet")
            || l.contains("Stack::fleet")
            || l.contains("Observer::with_model_cap")
            || l.contains("Stack::model_labels")
            || l.contains("Model::deployment")
            || l.contains("Class::from_label")
            || l.contains("Class::client_side_kind")
            || l.contains("firebreak::route")
            || l.contains("TargetKind")
            || l.contains("GateConfig::kind")
            || l.contains("GateConfig::queue_target")
            || l.contains("FleetEvent::BreakerOpen")
            || l.contains("names::BREAKER")
            || l.contains("names::TARGET_ATTEMPTS")
            || l.contains("names::FALLBACKS")
    };
    let now: String = now
        .lines()
        .filter(|l| !later(l))
        .map(|l| format!("{l}\n"))
        .collect();
    let (b, n) = (items(&before), items(&now));
    let (bl, nl) = (before.lines().count(), now.lines().count());
    println!(
        "items: {b} before, {n} now ({:.1}%)",
        100.0 * n as f64 / b as f64
    );
    println!(
        "listing lines: {bl} before, {nl} now ({:.1}%)",
        100.0 * nl as f64 / bl as f64
    );
    assert!(b > 300, "the before listing is there: {b}");
    assert!(n * 10 <= b * 6, "{n} items is over 60% of {b}");
}

#[test]
fn items_are_counted_by_kind_not_by_line() {
    let listing = "pub mod a\npub struct a::T\npub a::T::field: u8\nimpl a::T\npub const fn a::T::new() -> Self\nimpl core::fmt::Debug for a::T\npub fn a::T::fmt(&self) -> R\npub fn a::free()\npub const a::MAX: usize\n#[non_exhaustive] pub enum a::E\npub a::E::V\n";
    // mod, struct, inherent `new`, free fn, const, enum; not the field, `fmt` nor the variant.
    assert_eq!(items(listing), 6);
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
