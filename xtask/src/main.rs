//! Project tasks that need more than cargo: make sure a Vulkan driver exists (installing
//! lavapipe on Debian/Ubuntu when none is found), then run the demo or the tests.
//!
//!   cargo xtask demo    # quickstart example on the best adapter (lavapipe if nothing else)
//!   cargo xtask test    # the whole test suite (what CI runs)
//!   cargo xtask driver  # only make sure a Vulkan driver is present

use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let task = args.first().map(String::as_str).unwrap_or("help");
    match task {
        "driver" => ensure_driver(),
        "demo" => {
            ensure_driver()?;
            cargo(
                &["run", "--release", "--example", "quickstart", "--"],
                &args[1..],
            )
        }
        "test" => {
            ensure_driver()?;
            cargo(&["test", "--workspace", "--all-targets"], &args[1..])?;
            cargo(&["test", "--workspace", "--doc"], &args[1..])
        }
        _ => {
            eprintln!("usage: cargo xtask <demo|test|driver> [extra args]");
            Ok(())
        }
    }
}

fn cargo(base: &[&str], extra: &[String]) -> Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args(base).args(extra);
    // lavapipe's loader wants a runtime dir; headless machines often lack one.
    if std::env::var_os("XDG_RUNTIME_DIR").is_none() {
        cmd.env("XDG_RUNTIME_DIR", std::env::temp_dir());
    }
    let status = cmd.status().context("running cargo")?;
    if !status.success() {
        bail!("cargo {} failed ({status})", base.join(" "));
    }
    Ok(())
}

const ICD_DIRS: &[&str] = &[
    "/usr/share/vulkan/icd.d",
    "/etc/vulkan/icd.d",
    "/usr/local/share/vulkan/icd.d",
];

fn has_loader() -> bool {
    [
        "/usr/lib/x86_64-linux-gnu/libvulkan.so.1",
        "/usr/lib/aarch64-linux-gnu/libvulkan.so.1",
        "/usr/lib/libvulkan.so.1",
        "/usr/lib64/libvulkan.so.1",
    ]
    .iter()
    .any(|p| Path::new(p).exists())
}

fn has_icd() -> bool {
    if std::env::var_os("VK_DRIVER_FILES").is_some()
        || std::env::var_os("VK_ICD_FILENAMES").is_some()
    {
        return true;
    }
    ICD_DIRS.iter().any(|d| {
        std::fs::read_dir(d)
            .map(|mut it| {
                it.any(|e| {
                    e.map(|e| e.path().extension().is_some_and(|x| x == "json"))
                        .unwrap_or(false)
                })
            })
            .unwrap_or(false)
    })
}

/// Makes sure a Vulkan loader and at least one driver are installed. On Linux without one,
/// installs Debian's `mesa-vulkan-drivers` (lavapipe) and `libvulkan1` with apt-get when
/// running as root; otherwise says exactly what to install. macOS and Windows use Metal/DX12.
fn ensure_driver() -> Result<()> {
    if !cfg!(target_os = "linux") {
        return Ok(());
    }
    if has_loader() && has_icd() {
        return Ok(());
    }
    let pkgs = ["mesa-vulkan-drivers", "libvulkan1"];
    let is_root = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.starts_with(b"0"))
        .unwrap_or(false);
    let has_apt = Path::new("/usr/bin/apt-get").exists();
    if !(is_root && has_apt) {
        bail!(
            "no Vulkan driver found. Install lavapipe (software Vulkan), e.g. on Debian/Ubuntu:\n  sudo apt-get install -y {}\nthen run this command again.",
            pkgs.join(" ")
        );
    }
    eprintln!(
        "xtask: no Vulkan driver found; installing lavapipe ({}) with apt-get",
        pkgs.join(", ")
    );
    let ok = Command::new("apt-get")
        .args(["update", "-qq"])
        .status()?
        .success()
        && Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(pkgs)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()?
            .success();
    if !ok || !(has_loader() && has_icd()) {
        bail!("installing {} failed; install them by hand", pkgs.join(" "));
    }
    Ok(())
}
