//! Released migrations are append-only: a database that already ran one
//! never runs it again, so editing it would leave old and new databases
//! with different schemas. Each migration's SHA-256 is checked in beside
//! them (`migrations.sha256`, in `sha256sum` format); a change to a listed
//! file fails here. A new migration is added to the list with
//! `sha256sum src/m2*.rs > migrations.sha256` from this crate's folder.

use std::collections::BTreeMap;
use std::path::Path;

use sha2::{Digest, Sha256};

fn crate_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The checked-in digests, by file name.
fn recorded() -> BTreeMap<String, String> {
    let list = std::fs::read_to_string(crate_dir().join("migrations.sha256")).expect("migrations.sha256");
    list.lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| {
            let (digest, path) = line.split_once("  ").expect("`<sha256>  src/<file>` lines");
            (path.trim_start_matches("src/").to_owned(), digest.to_owned())
        })
        .collect()
}

/// The migrations in `src/`, with the digest of their text as it is now.
fn present() -> BTreeMap<String, String> {
    std::fs::read_dir(crate_dir().join("src"))
        .expect("src folder")
        .map(|entry| entry.expect("entry").path())
        .filter(|path| path.file_name().is_some_and(|name| name.to_string_lossy().starts_with("m2")))
        .map(|path| {
            let name = path.file_name().map(|name| name.to_string_lossy().into_owned()).unwrap_or_default();
            let text = std::fs::read(&path).expect("migration readable");
            (name, hex::encode(Sha256::digest(&text)))
        })
        .collect()
}

#[test]
fn no_released_migration_has_been_edited_or_removed() {
    let present = present();
    for (name, digest) in recorded() {
        let now = present.get(&name);
        assert!(now.is_some(), "migration {name} was removed; released migrations stay");
        assert_eq!(
            now,
            Some(&digest),
            "migration {name} was edited; released migrations are append-only: add a new one instead"
        );
    }
}

#[test]
fn every_migration_has_its_digest_recorded() {
    let recorded = recorded();
    for name in present().keys() {
        assert!(
            recorded.contains_key(name),
            "migration {name} has no digest in migrations.sha256; run `sha256sum src/m2*.rs > migrations.sha256`"
        );
    }
}
