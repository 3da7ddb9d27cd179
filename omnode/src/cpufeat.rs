//! The CPU features a process may rely on, as sent with every migration offer and compared by
//! the target before it accepts.
//!
//! Owns: reading this machine's user-visible x86 instruction-set features (the `flags` line of
//! `/proc/cpuinfo`, filtered to the features user code can execute or that glibc and compilers
//! select code paths by) and the size of the XSAVE area the kernel uses for a thread's FPU and
//! vector state (CPUID leaf 0xD: the restored FPU state of a process only fits a CPU whose
//! enabled state components give the same size). The size travels as the pseudo-feature
//! `xsave_size=N`, so a difference is reported like any missing feature.
//! Must not know: the protocol (it only gets a list of names) or how a process is rebuilt.
//!
//! Kernel-only flags (`hypervisor`, `x2apic`, `constant_tsc`, ...) are left out on purpose:
//! they differ between identical CPUs under different kernels or hypervisors and no user code
//! can depend on them.
//!
//! For tests only: [`set_mask`] (the daemon's hidden `--mask-cpu-features` flag, or the
//! `OMNODE_MASK_CPU_FEATURES` variable) removes named features from what this node reports as
//! its own, so a test can make a node look like an older CPU.

use std::sync::OnceLock;

/// Flags of `/proc/cpuinfo` that user-space code can depend on (instructions, or features
/// libraries pick code paths by at start-up).
const USER_FEATURES: &[&str] = &[
    "fpu",
    "cx8",
    "cmov",
    "mmx",
    "fxsr",
    "sse",
    "sse2",
    "pni",
    "ssse3",
    "sse4_1",
    "sse4_2",
    "sse4a",
    "popcnt",
    "abm",
    "lahf_lm",
    "cx16",
    "movbe",
    "lm",
    "pclmulqdq",
    "aes",
    "xsave",
    "xsaveopt",
    "xsavec",
    "xsaves",
    "avx",
    "avx2",
    "fma",
    "fma4",
    "f16c",
    "bmi1",
    "bmi2",
    "adx",
    "rdrand",
    "rdseed",
    "rdtscp",
    "rdpid",
    "sha_ni",
    "vaes",
    "vpclmulqdq",
    "gfni",
    "erms",
    "fsrm",
    "fsgsbase",
    "clflushopt",
    "clwb",
    "movdiri",
    "movdir64b",
    "serialize",
    "cldemote",
    "3dnowprefetch",
    "xop",
    "tbm",
    "rtm",
    "hle",
    "avx_vnni",
    "avx_vnni_int8",
    "avx_ifma",
    "avx512f",
    "avx512dq",
    "avx512cd",
    "avx512bw",
    "avx512vl",
    "avx512ifma",
    "avx512vbmi",
    "avx512_vbmi2",
    "avx512_vnni",
    "avx512_bitalg",
    "avx512_vpopcntdq",
    "avx512_bf16",
    "avx512_fp16",
    "avx512_vp2intersect",
    "amx_tile",
    "amx_int8",
    "amx_bf16",
    "amx_fp16",
    "pku",
    "ospke",
    "waitpkg",
    "tsxldtrk",
    "user_shstk",
    "sm3",
    "sm4",
    "sha512",
];

/// The prefix of the pseudo-feature carrying the XSAVE area size.
pub const XSAVE_SIZE: &str = "xsave_size=";

static MASK: OnceLock<Vec<String>> = OnceLock::new();

/// For tests: features this node pretends not to have (set once, at start-up).
pub fn set_mask(list: &str) {
    let v: Vec<String> = list
        .split([',', ' '])
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect();
    if !v.is_empty() {
        tracing::warn!(
            "this node hides CPU features {v:?} from migrations (--mask-cpu-features: for tests)"
        );
    }
    let _ = MASK.set(v);
}

fn mask() -> &'static [String] {
    MASK.get_or_init(|| {
        std::env::var("OMNODE_MASK_CPU_FEATURES")
            .map(|s| {
                s.split([',', ' '])
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default()
    })
}

/// The user-visible features in the `flags` line of a `/proc/cpuinfo` text (the first CPU's:
/// the kernel reports the features common to all CPUs the same way on every line).
pub fn parse_flags(cpuinfo: &str) -> Result<Vec<String>, String> {
    let line = cpuinfo
        .lines()
        .find(|l| l.starts_with("flags"))
        .ok_or("no `flags` line")?;
    let (_, flags) = line.split_once(':').ok_or("a `flags` line without ':'")?;
    let mut v: Vec<String> = flags
        .split_whitespace()
        .filter(|f| USER_FEATURES.contains(f))
        .map(str::to_owned)
        .collect();
    v.sort();
    v.dedup();
    if v.is_empty() {
        return Err("no known user-visible feature in the `flags` line".into());
    }
    Ok(v)
}

/// The size in bytes of the XSAVE area for the state components enabled in XCR0.
#[cfg(target_arch = "x86_64")]
pub fn xsave_size() -> Option<u32> {
    // CPUID leaf 1, ECX bit 27: OSXSAVE (the kernel enabled XSAVE).
    let l1 = std::arch::x86_64::__cpuid(1);
    if l1.ecx & (1 << 27) == 0 {
        return None;
    }
    // Leaf 0xD, subleaf 0, EBX: bytes needed for the components enabled in XCR0.
    let d = std::arch::x86_64::__cpuid_count(0xd, 0);
    Some(d.ebx)
}

#[cfg(not(target_arch = "x86_64"))]
pub fn xsave_size() -> Option<u32> {
    None
}

/// The features a process of this node may use, with the XSAVE size pseudo-feature: what home
/// puts in an offer. Fails (and the caller refuses the move) when /proc/cpuinfo is unreadable.
/// Read once: a node's CPU features do not change while it runs (a failed read is not kept).
pub fn offered() -> Result<Vec<String>, String> {
    static READ: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    if let Some(v) = READ.get() {
        return Ok(v.clone());
    }
    let v = read_offered()?;
    Ok(READ.get_or_init(|| v).clone())
}

fn read_offered() -> Result<Vec<String>, String> {
    let text = std::fs::read_to_string("/proc/cpuinfo")
        .map_err(|e| format!("cannot read /proc/cpuinfo: {e}"))?;
    let mut v = parse_flags(&text).map_err(|e| format!("/proc/cpuinfo: {e}"))?;
    if let Some(n) = xsave_size() {
        v.push(format!("{XSAVE_SIZE}{n}"));
    }
    Ok(v)
}

/// This node's features as a target compares them with an offer: [`offered`] minus the test
/// mask. An error becomes an empty list at the caller, which refuses every offer (fail closed).
pub fn local() -> Result<Vec<String>, String> {
    let mut v = offered()?;
    let mask = mask();
    v.retain(|f| {
        !mask
            .iter()
            .any(|m| m == f || (m == "xsave_size" && f.starts_with(XSAVE_SIZE)))
    });
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_user_visible_flags_are_kept_sorted() {
        let text = "processor\t: 0\nflags\t\t: fpu hypervisor avx2 x2apic sse2 avx2 constant_tsc\n\
                    processor\t: 1\nflags\t\t: fpu\n";
        assert_eq!(parse_flags(text).unwrap(), vec!["avx2", "fpu", "sse2"]);
    }

    #[test]
    fn unreadable_input_is_an_error_not_an_empty_list() {
        assert!(parse_flags("processor : 0\n").is_err());
        assert!(parse_flags("flags : hypervisor x2apic\n").is_err());
    }

    #[test]
    fn this_machine_reports_sse2_and_an_xsave_size() {
        let v = local().unwrap();
        assert!(v.iter().any(|f| f == "sse2"), "{v:?}");
        if let Some(n) = xsave_size() {
            // legacy area (512) + header (64) at least
            assert!(n >= 576, "{n}");
            assert!(v.contains(&format!("{XSAVE_SIZE}{n}")), "{v:?}");
        }
    }
}
