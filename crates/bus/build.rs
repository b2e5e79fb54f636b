fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=../../proto");
    let fds = protox::compile(["tally/v1/events.proto"], ["../../proto"])?;
    prost_build::Config::new().compile_fds(fds)?;
    Ok(())
}
