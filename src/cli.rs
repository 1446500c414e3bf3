//! The `hch` command line.
pub fn main() -> anyhow::Result<()> {
    Ok(())
}
