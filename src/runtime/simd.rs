//! Which SIMD code paths this CPU can run, decided once at run time: the
//! library is built for the baseline x86-64 (or any other target) and picks
//! its kernels from what the CPU reports, never from compile-time flags.

use std::io::Write;
use std::sync::OnceLock;

/// A family of kernels.  Ordered: a CPU that runs one level runs every
/// level below it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SimdLevel {
    /// Portable Rust, any CPU.
    Scalar,
    /// x86-64 with AVX2, FMA and F16C.
    Avx2,
    /// x86-64 with AVX-512 F, BW, VL, DQ and VNNI (Ice Lake, Zen 4 and later),
    /// on top of everything `Avx2` needs.
    Avx512,
}

impl SimdLevel {
    pub fn name(self) -> &'static str {
        match self {
            Self::Scalar => "scalar",
            Self::Avx2 => "avx2",
            Self::Avx512 => "avx512",
        }
    }
}

/// The best level this CPU supports.
pub fn detected() -> SimdLevel {
    static LEVEL: OnceLock<SimdLevel> = OnceLock::new();
    *LEVEL.get_or_init(detect)
}

/// The level the runtime uses: the detected one, or a lower one named by
/// the environment variable `ZEPH_SIMD` (`scalar`, `avx2`, `avx512`), read
/// once, for comparing kernels in benchmarks.
pub fn configured() -> SimdLevel {
    static LEVEL: OnceLock<SimdLevel> = OnceLock::new();
    *LEVEL.get_or_init(|| {
        let asked = match std::env::var("ZEPH_SIMD").as_deref() {
            Ok("scalar") => SimdLevel::Scalar,
            Ok("avx2") => SimdLevel::Avx2,
            _ => SimdLevel::Avx512,
        };
        asked.min(detected())
    })
}

/// Every level this CPU can run, lowest first.
pub fn available() -> Vec<SimdLevel> {
    let best = detected();
    ALL.into_iter().filter(|&l| l <= best).collect()
}

const ALL: [SimdLevel; 3] = [SimdLevel::Scalar, SimdLevel::Avx2, SimdLevel::Avx512];

/// For a test that compares the levels: every level this CPU can run (as
/// [`available`]).  The levels it cannot run are named on standard error,
/// once per test, so that a pass on a smaller CPU is not read as a pass at
/// every level.
#[doc(hidden)]
pub fn levels_to_test() -> Vec<SimdLevel> {
    let levels = available();
    let names: Vec<&str> = levels.iter().map(|l| l.name()).collect();
    note_untested(&format!("compared only {}", names.join(", ")));
    levels
}

/// For a test that needs `level`: whether this CPU runs it.  When it does
/// not, the test is named NOT TESTED as by [`levels_to_test`].
#[doc(hidden)]
pub fn can_test(level: SimdLevel) -> bool {
    let runs = level <= detected();
    if !runs {
        note_untested(&format!("did not run (it needs {})", level.name()));
    }
    runs
}

/// Writes, once per test (the tests ask inside their loops), which levels
/// this CPU cannot run and what the test did instead.  Written to the
/// stream itself: the test harness captures `eprintln!`, not this.
fn note_untested(instead: &str) {
    let untested: Vec<SimdLevel> = ALL.into_iter().filter(|&l| l > detected()).collect();
    let Some(&highest) = untested.last() else {
        return;
    };
    static NOTED: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    let test = std::thread::current()
        .name()
        .unwrap_or("a test")
        .to_string();
    let mut noted = NOTED.lock().unwrap_or_else(|e| e.into_inner());
    if noted.contains(&test) {
        return;
    }
    let names: Vec<&str> = untested.iter().map(|l| l.name()).collect();
    let _ = writeln!(
        std::io::stderr(),
        "NOT TESTED on this CPU: {} (the CPU lacks {}); {test} {instead}",
        names.join(", "),
        missing_features(highest).join(", "),
    );
    noted.push(test);
}

/// The CPU features each level needs, and whether this CPU has them.
#[cfg(target_arch = "x86_64")]
fn features() -> [(&'static str, SimdLevel, bool); 8] {
    use SimdLevel::{Avx2, Avx512};
    [
        ("avx2", Avx2, is_x86_feature_detected!("avx2")),
        ("fma", Avx2, is_x86_feature_detected!("fma")),
        ("f16c", Avx2, is_x86_feature_detected!("f16c")),
        ("avx512f", Avx512, is_x86_feature_detected!("avx512f")),
        ("avx512bw", Avx512, is_x86_feature_detected!("avx512bw")),
        ("avx512vl", Avx512, is_x86_feature_detected!("avx512vl")),
        ("avx512dq", Avx512, is_x86_feature_detected!("avx512dq")),
        ("avx512vnni", Avx512, is_x86_feature_detected!("avx512vnni")),
    ]
}

/// What this CPU lacks for `level` (a level needs every feature of the
/// levels below it too).
#[cfg(target_arch = "x86_64")]
fn missing_features(level: SimdLevel) -> Vec<&'static str> {
    features()
        .into_iter()
        .filter(|&(_, needed_by, has)| needed_by <= level && !has)
        .map(|(name, ..)| name)
        .collect()
}

#[cfg(not(target_arch = "x86_64"))]
fn missing_features(_: SimdLevel) -> Vec<&'static str> {
    vec!["x86-64"]
}

#[cfg(target_arch = "x86_64")]
fn detect() -> SimdLevel {
    ALL.into_iter()
        .rev()
        .find(|&l| missing_features(l).is_empty())
        .unwrap_or(SimdLevel::Scalar)
}

#[cfg(not(target_arch = "x86_64"))]
fn detect() -> SimdLevel {
    SimdLevel::Scalar
}
