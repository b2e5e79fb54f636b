// Re-embed migrations when the folder changes, and give tests a hash of it so a stale template
// database is never reused.
use std::{collections::hash_map::DefaultHasher, fs, hash::Hasher, path::Path};

fn walk(dir: &Path, h: &mut DefaultHasher) {
    let mut entries: Vec<_> = fs::read_dir(dir).into_iter().flatten().flatten().collect();
    entries.sort_by_key(|e| e.path());
    for e in entries {
        let p = e.path();
        h.write(
            p.to_string_lossy()
                .rsplit("migrations")
                .next()
                .unwrap_or("")
                .as_bytes(),
        );
        if p.is_dir() {
            walk(&p, h);
        } else if let Ok(b) = fs::read(&p) {
            h.write(&b);
        }
    }
}

fn main() {
    println!("cargo:rerun-if-changed=../../migrations");
    let mut h = DefaultHasher::new();
    walk(Path::new("../../migrations"), &mut h);
    println!("cargo:rustc-env=TALLY_MIGRATIONS_HASH={:x}", h.finish());
}
