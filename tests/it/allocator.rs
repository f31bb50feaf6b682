//! The `quiver` binary runs on jemalloc with its options (one arena), for RocksDB's
//! C++ as well as Rust: the lookups' flat cost in key count depends on it
//! (docs/benchmarks.md, "One allocator: jemalloc"). Linux: elsewhere jemalloc's
//! symbols may be prefixed.

use std::process::Command;

use quiver_e2e::quiver_binary;

#[test]
fn the_binary_allocates_with_jemalloc_and_one_arena() {
    // jemalloc echoes the options it reads when `confirm_conf` is set; glibc's
    // malloc ignores MALLOC_CONF and prints nothing.
    let out = Command::new(quiver_binary())
        .arg("--version")
        .env("MALLOC_CONF", "confirm_conf:true")
        .output()
        .expect("quiver runs");
    assert!(out.status.success(), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("<jemalloc>: -- Set conf value: narenas:1"),
        "jemalloc with narenas:1 expected, stderr: {stderr}"
    );
}

#[test]
fn the_binary_exports_malloc_so_rocksdb_uses_jemalloc_too() {
    // C++'s operator new calls malloc; the binary's own malloc (jemalloc's)
    // takes it only if exported in the dynamic symbol table.
    let out = Command::new("nm")
        .args(["-D", "--defined-only"])
        .arg(quiver_binary())
        .output()
        .expect("nm (binutils, with the C toolchain) runs");
    assert!(out.status.success(), "{out:?}");
    let symbols = String::from_utf8_lossy(&out.stdout);
    for name in ["malloc", "free", "realloc", "calloc"] {
        assert!(
            symbols
                .lines()
                .any(|l| l.split_whitespace().last() == Some(name)),
            "the quiver binary does not export {name}"
        );
    }
}
