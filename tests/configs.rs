//! Every config shipped in `configs/` loads, and its registry and fences validate — the same
//! checks `lienwatch check` makes at start.

use std::path::Path;

use anyhow::{Context, Result, ensure};
use pipeline::config::Config;
use pipeline::replay::load_reference;

#[test]
fn shipped_configs_load_and_their_reference_data_validates() -> Result<()> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir)? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "toml") {
            let config = Config::load_with_env(Some(&path), [])
                .with_context(|| format!("loading {}", path.display()))?;
            let (registry, fences) = load_reference(&config)
                .with_context(|| format!("reference data of {}", path.display()))?;
            ensure!(
                registry.vehicle_count() > 0,
                "{}: empty registry",
                path.display()
            );
            ensure!(
                fences.risk_count() > 0,
                "{}: no risk fences",
                path.display()
            );
            checked += 1;
        }
    }
    ensure!(checked > 0, "no configs in {}", dir.display());
    Ok(())
}

#[test]
fn check_command_accepts_the_local_config() -> Result<()> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/local.toml");
    pipeline::cli::run_from(vec![
        "lienwatch".into(),
        "check".into(),
        "--config".into(),
        path.display().to_string(),
    ])
}
