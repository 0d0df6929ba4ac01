//! The release binary's code layout (build.rs, link/hot-text.ld): the
//! functions summond runs for every connection lie together in `.text.hot`,
//! so an idle summond that has served keeps a few 64 kB windows of its
//! code resident, not one for every scattered function. Read off the built
//! binary with binutils' `readelf` and `nm`. `.ci/run` runs this in release
//! mode too; a debug build must not have the section (the script is for
//! release builds only).

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_summond");

fn tool(name: &str, args: &[&str]) -> String {
    let out = Command::new(name)
        .args(args)
        .arg(BIN)
        .output()
        .unwrap_or_else(|e| panic!("{name}: {e} (binutils is needed)"));
    assert!(out.status.success(), "{name} {args:?} failed");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// (address, size) of the named section.
fn section(name: &str) -> Option<(u64, u64)> {
    tool("readelf", &["-SW"]).lines().find_map(|line| {
        // "  [16] .text.hot  PROGBITS  0000000000060670 05f670 040a85 00 AX ..."
        let rest = line.split_once(']')?.1;
        let f: Vec<&str> = rest.split_whitespace().collect();
        (f.first() == Some(&name)).then(|| {
            let hex = |s: &str| u64::from_str_radix(s, 16).expect("hex field");
            (hex(f[2]), hex(f[4]))
        })
    })
}

#[test]
fn the_per_connection_functions_lie_together_in_a_release_build() {
    let hot = section(".text.hot");
    if cfg!(debug_assertions) {
        assert_eq!(hot, None, "a debug build links with the default layout");
        return;
    }
    let (start, size) = hot.expect("a release build has .text.hot (build.rs)");
    // A few windows: the globs in the script must not pull half the
    // program in.
    assert!(size < 512 * 1024, ".text.hot is {size} bytes");
    let symbols = tool("nm", &["--defined-only"]);
    for wanted in [
        "6Server3run17h",
        "11spawn_child17h",
        "16start_connection17h",
        "13reap_children17h",
        "10ChildTable6insert17h",
    ] {
        let addr = symbols
            .lines()
            .find(|l| l.contains("summond") && l.contains(wanted))
            .and_then(|l| u64::from_str_radix(l.split_whitespace().next()?, 16).ok())
            .unwrap_or_else(|| panic!("no symbol like {wanted}"));
        assert!(
            (start..start + size).contains(&addr),
            "{wanted} at {addr:#x}, outside .text.hot {start:#x}+{size:#x}"
        );
    }
}
