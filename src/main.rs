fn main() -> anyhow::Result<()> {
    hch::cli::main()
}
