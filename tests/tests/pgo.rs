//! QuickJS is compiled with a committed profile (`vendor/rquickjs-sys/pgo/`, made by
//! `scripts/pgo.sh`), which the build uses only while every QuickJS source is the one it was made
//! from. A change to the engine without a new profile would build fine, only slower (and with a
//! cargo warning that is easy to miss): this test names the change instead.

use std::path::Path;

fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash = 0xcbf2_9ce4_8422_2325u64;
    for &b in bytes {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

#[test]
fn the_engine_profile_was_made_from_these_quickjs_sources() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../vendor/rquickjs-sys");
    let stamp = std::fs::read_to_string(root.join("pgo/stamp")).expect("vendor/rquickjs-sys/pgo/stamp (scripts/pgo.sh makes it)");
    let mut files = 0;
    for line in stamp.lines() {
        let Some((name, hash)) = line.split_once(' ') else { continue };
        if !(name.ends_with(".c") || name.ends_with(".h")) {
            continue;
        }
        let bytes = std::fs::read(root.join("quickjs").join(name)).unwrap_or_else(|e| panic!("quickjs/{name}: {e}"));
        assert_eq!(
            format!("{:016x}", fnv1a(&bytes)),
            hash,
            "vendor/rquickjs-sys/quickjs/{name} changed since the engine's profile was made: run scripts/pgo.sh and commit vendor/rquickjs-sys/pgo/"
        );
        files += 1;
    }
    assert!(files >= 4, "the stamp lists QuickJS's sources, found {files}");
    for source in ["quickjs", "libregexp", "libunicode", "dtoa"] {
        let gcda = root.join(format!("pgo/{source}.gcda"));
        let size = std::fs::metadata(&gcda).map(|m| m.len()).unwrap_or(0);
        assert!(size > 0, "{} is missing or empty: run scripts/pgo.sh", gcda.display());
    }
}

#[test]
fn the_hash_is_fnv1a() {
    // Published FNV-1a 64 test vectors: the stamp's hashes mean what build.rs says they mean.
    assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
    assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
    assert_eq!(fnv1a(b"foobar"), 0x8594_4171_f739_67e8);
}
